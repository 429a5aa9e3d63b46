-- A fake of the `wahook` host module for busted specs: the same names, argument rules and error
-- messages as the C registration (runtime/lua_api*.c), with every effect recorded in memory
-- instead of being committed. tests/unit/test_api_names.c proves that this file and the C module
-- expose the same names; the pure functions (localtime, mktime) run the real C code through the
-- wahook_pure Lua module, loaded on first use.
--
--   local wahook = require("spec.support.wahook_fake")._install()  -- require "wahook" gets it
--   wahook._reset{ state = {...}, now = 1761141807, config = {...} }
--   handlers["messages.upsert"](ev)
--   local out = wahook._outcome()  -- {actions, timers, cancelled, state, facts, metrics}
--
-- Test-only helpers start with "_" (the names check ignores them):
--   _install()        makes require "wahook" return this module; returns it
--   _reset(opts)      starts a new run: opts.state (the contact's prior state), opts.now (epoch
--                     seconds, default 1761141807), opts.config (wahook.config), opts.phase
--                     ("handler" | "try" | "deliver" | "load"), opts.http (function(req) ->
--                     resp | nil, err, for http.request in the deliver phase)
--   _outcome()        what the run queued, shaped like wh_outcome_to_json: {actions, timers,
--                     cancelled, state = {change = "unchanged"|"set"|"cleared", value}, facts,
--                     metrics}; copies, safe to keep
--   _logs()           the log lines of the run: {level, msg, fields}
--   _set_now(t)       moves the clock (epoch seconds) within a run
--   _null             the JSON null sentinel (cjson.null) when lua-cjson is available

local M = {}

-- ---- caps of include/wahook/outcome.h and the host functions --------------------------------

local LIMITS = {
  actions = 100, timers = 50, facts = 100, metrics = 100,
  state_bytes = 64 * 1024, payload_bytes = 64 * 1024, mail_bytes = 10 * 1024 * 1024,
}
local MAX_TEXT = 4096
local MAX_DELAY_MS = 300000
local MAX_RECIPIENTS = 20
local MAX_ATTACHMENTS = 10
local MAX_TIMER_SECONDS = 30.0 * 24 * 3600
local MAX_TIMER_NAME = 64
local MAX_FACT_STRING = 512
local MAX_LOG_MSG = 4096
local MAX_LOG_FIELDS = 16384
local MAX_LABELS = 8
local MAX_URL = 2048
local MAX_HEADERS = 50
local MAX_BODY = 16 * 1024 * 1024
local MAX_HTTP_TIMEOUT = 30.0
local MAX_DEPTH = 64

-- ---- lazily loaded helpers ------------------------------------------------------------------

local cjson_mod
local function cjson()
  if cjson_mod == nil then
    local ok, m = pcall(require, "cjson")
    cjson_mod = ok and m or false
  end
  return cjson_mod or nil
end

local function null()
  local c = cjson()
  return c and c.null or nil
end

local function is_null(v)
  return v ~= nil and type(v) == "userdata" and v == null()
end

-- The C functions shared with the runtime: loaded on first use, so this file also loads where
-- the wahook_pure module is not on package.cpath (the names check in tests/unit).
local function pure()
  return require "wahook_pure"
end

-- ---- errors ---------------------------------------------------------------------------------

-- Errors raised by an API body carry this metatable; the wrapper re-raises them at the script's
-- line, as luaL_error does for the C functions.
local API_ERR = {}
local function fail(fmt, ...)
  error(setmetatable({ msg = string.format(fmt, ...) }, API_ERR), 0)
end

-- wh_lua_describe: how a value shows in messages.
local function describe(v)
  local t = type(v)
  if v == nil then return "nil" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if math.type(v) == "integer" then return string.format("%d", v) end
    return string.format("%.14g", v)
  end
  if t == "string" then
    if #v > 40 then return '"' .. v:sub(1, 40) .. '..."' end
    return '"' .. v .. '"'
  end
  if is_null(v) then return "null" end
  return "a " .. t
end

-- ---- the run --------------------------------------------------------------------------------

local S -- the current run, see M._reset

local PHASES = { load = true, handler = true, try = true, deliver = true }
local WHERE = {
  load = "while scripts load", handler = "from an event handler", try = "from an event handler",
  deliver = "from the deliverer",
}
local IN_HANDLER = { handler = true, try = true }
local IN_DELIVER = { deliver = true }
local IN_HANDLER_OR_DELIVER = { handler = true, try = true, deliver = true }
local ANYWHERE = { load = true, handler = true, try = true, deliver = true }

local function allowed_in(mask)
  local names = {}
  if mask.handler or mask.try then names[#names + 1] = "event handler" end
  if mask.deliver then names[#names + 1] = "deliverer" end
  if mask.load then names[#names + 1] = "script loading" end
  return #names > 0 and table.concat(names, ", ") or "nowhere"
end

-- A host function: checks the phase, runs body(fullname, ...) and re-raises its argument errors
-- at the caller's line.
local function host(fullname, mask, body)
  return function(...)
    if not mask[S.phase] then
      error(string.format("%s cannot be called %s (allowed in: %s)", fullname, WHERE[S.phase],
                          allowed_in(mask)), 2)
    end
    local r = table.pack(pcall(body, fullname, ...))
    if r[1] then return table.unpack(r, 2, r.n) end
    if getmetatable(r[2]) == API_ERR then error(r[2].msg, 2) end
    error(r[2], 0)
  end
end

-- ---- argument checks (wh_lua_check_string, wh_lua_check_keys) --------------------------------

local function check_string(fname, v, what, min, max)
  if type(v) ~= "string" or #v < min or #v > max then
    local got = describe(v)
    if type(v) == "string" and #v > max then got = string.format("%d bytes", #v) end
    fail("%s: %s must be a %sstring of at most %d bytes, got %s", fname, what,
         min > 0 and "non-empty " or "", max, got)
  end
  if not utf8.len(v) then fail("%s: %s is not valid UTF-8", fname, what) end
  return v
end

local function check_keys(t, allowed, what)
  local set = {}
  for _, k in ipairs(allowed) do set[k] = true end
  for k in next, t do
    if not (type(k) == "string" and set[k]) then
      fail("%s: unknown field %s (allowed: %s)", what, describe(k), table.concat(allowed, ", "))
    end
  end
end

local function is_table(v) return type(v) == "table" end

-- ---- Lua -> JSON (runtime/luaconv.c), as deep copies ------------------------------------------

-- Empty arrays that came from JSON carry this metatable, so they serialise as [] again.
local ARRAY_MT = { __name = "array" }
-- Read-only proxies (wahook.config) -> the table they wrap.
local RO = setmetatable({}, { __mode = "k" })

local CONV_ERR = {}
local function conv_fail(c, path, fmt, ...)
  error(setmetatable({ msg = "cannot serialise " .. string.format(fmt, ...) .. " at " .. path },
                     CONV_ERR), 0)
end

local function charge(c, n)
  c.used = c.used + n
  if c.max ~= 0 and c.used > c.max then
    error(setmetatable({ msg = string.format("%s is too large: more than %d bytes as JSON",
                                             c.root, c.max) }, CONV_ERR), 0)
  end
end

local function key_path(path, k)
  if #k > 0 and #k <= 40 and k:match("^[_%a][_%w]*$") then return path .. "." .. k end
  if #k > 40 then return path .. '["' .. k:sub(1, 40) .. '..."]' end
  return path .. '["' .. k .. '"]'
end

local conv

local function conv_table(c, t, path, depth)
  if depth > MAX_DEPTH then conv_fail(c, path, "a table nested deeper than %d levels", MAX_DEPTH) end
  if RO[t] then return conv_table(c, RO[t], path, depth) end
  local marked = getmetatable(t) == ARRAY_MT
  for i = 1, depth do
    if c.ancestors[i] == t then conv_fail(c, path, "a table that contains itself (a cycle)") end
  end
  c.ancestors[depth + 1] = t
  local nstr, nint, maxk, nonpositive = 0, 0, 0, false
  for k in next, t do
    local kt = type(k)
    if kt == "string" then
      nstr = nstr + 1
    elseif math.type(k) == "integer" then
      nint = nint + 1
      if k < 1 then nonpositive = true elseif k > maxk then maxk = k end
    else
      conv_fail(c, path, "a table with a %s key", kt == "number" and "non-integer number" or kt)
    end
  end
  if nstr > 0 and nint > 0 then conv_fail(c, path, "a table with mixed keys") end
  if nint > 0 and (nonpositive or maxk ~= nint) then
    conv_fail(c, path, "a table with mixed keys (integer keys must be exactly 1..n, without holes)")
  end
  local out = {}
  if nint > 0 or (nstr == 0 and marked) then
    charge(c, 2)
    for i = 1, maxk do
      out[i] = conv(c, t[i], path .. "[" .. i .. "]", depth + 1)
      charge(c, 1)
    end
    if maxk == 0 then setmetatable(out, ARRAY_MT) end
    return out
  end
  charge(c, 2)
  for k, v in next, t do
    local kp = key_path(path, k)
    out[k] = conv(c, v, kp, depth + 1)
    charge(c, #k + 4)
    if not utf8.len(k) then conv_fail(c, kp, "a key that is not valid UTF-8") end
  end
  return out
end

conv = function(c, v, path, depth)
  local t = type(v)
  if v == nil then
    charge(c, 4)
    return nil
  elseif t == "boolean" then
    charge(c, 5)
    return v
  elseif t == "number" then
    charge(c, 20)
    if math.type(v) == "float" and (v ~= v or v == math.huge or v == -math.huge) then
      conv_fail(c, path, "a number that is NaN or infinite")
    end
    return v
  elseif t == "string" then
    charge(c, #v + 2)
    if not utf8.len(v) then conv_fail(c, path, "a string that is not valid UTF-8") end
    return v
  elseif is_null(v) then
    charge(c, 4)
    return v
  elseif t == "table" then
    return conv_table(c, v, path, depth)
  end
  conv_fail(c, path, "a %s value", t)
end

-- A JSON-faithful deep copy of v, or an argument error "<fname>: <reason>".
local function to_json(fname, v, root, max)
  local c = { used = 0, max = max or 0, root = root, ancestors = {} }
  local ok, res = pcall(conv, c, v, root, 0)
  if ok then return res end
  if getmetatable(res) == CONV_ERR then fail("%s: %s", fname, res.msg) end
  error(res, 0)
end

local function is_list(j) -- j is a to_json copy
  if type(j) ~= "table" then return false end
  return j[1] ~= nil or getmetatable(j) == ARRAY_MT
end

local function copy(j)
  if type(j) ~= "table" then return j end
  local out = {}
  for k, v in next, j do out[k] = copy(v) end
  if getmetatable(j) == ARRAY_MT then setmetatable(out, ARRAY_MT) end
  return out
end

local function readonly(j, name)
  if type(j) ~= "table" then return j end
  local target = {}
  for k, v in next, j do target[k] = readonly(v, name) end
  if getmetatable(j) == ARRAY_MT then setmetatable(target, ARRAY_MT) end
  local proxy = setmetatable({}, {
    __index = target,
    __newindex = function() error(name .. " is read-only", 2) end,
    __len = function() return rawlen(target) end,
    __pairs = function() return next, target, nil end,
    __metatable = "read-only",
  })
  RO[proxy] = target
  return proxy
end

local function queue_action(fname, action)
  if #S.actions >= LIMITS.actions then
    fail("%s: too many actions: a handler may queue at most %d per event", fname, LIMITS.actions)
  end
  S.actions[#S.actions + 1] = action
end

-- ---- actions --------------------------------------------------------------------------------

-- wh__check_recipient: digits (with + spaces - ( ) dropped) or a WhatsApp JID.
local function recipient(fname, v)
  if math.type(v) == "integer" and v > 0 then
    local s = string.format("%d", v)
    if #s >= 5 then return s end
  elseif type(v) == "string" then
    local at = v:find("@", 1, true)
    if at then
      local loc, dom = v:sub(1, at - 1), v:sub(at + 1)
      if #loc > 0 and #loc <= 64 and #dom > 0 and #dom <= 32 and #v < 128
         and loc:match("^[%w%._:%-]+$") and dom:match("^[a-z%.]+$") then
        return v
      end
    else
      local digits, ok = {}, true
      for i = 1, #v do
        local ch = v:sub(i, i)
        if ch:match("%d") then
          if #digits < 20 then digits[#digits + 1] = ch else ok = false end
        elseif not ch:match("[+ %-()]") then
          ok = false
        end
        if not ok then break end
      end
      if ok and #digits >= 5 then return table.concat(digits) end
    end
  end
  fail("%s: 'to' must be a phone number (digits, optionally with + and spaces) or a WhatsApp "
       .. "JID such as 34600111222@s.whatsapp.net, got %s", fname, describe(v))
end

-- lua_tointegerx: integers, integral floats and numeric strings.
local function tointeger(v)
  if type(v) == "string" then v = tonumber(v) end
  if type(v) ~= "number" then return nil end
  return math.tointeger(v)
end

M.send_text = host("wahook.send_text", IN_HANDLER, function(fname, to, text, opts)
  to = recipient(fname, to)
  check_string(fname, text, "text", 1, MAX_TEXT)
  local action = { type = "send_text", to = to, text = text }
  if opts ~= nil then
    if not is_table(opts) then fail("%s: options must be a table, got %s", fname, describe(opts)) end
    check_keys(opts, { "delay", "quoted", "link_preview" }, "wahook.send_text options")
    if opts.delay ~= nil then
      local d = tointeger(opts.delay)
      if not d or d < 0 or d > MAX_DELAY_MS then
        fail("%s: delay must be an integer number of milliseconds 0..%d, got %s", fname,
             MAX_DELAY_MS, describe(opts.delay))
      end
      action.delay = d
    end
    if opts.quoted ~= nil then
      action.quoted = check_string(fname, opts.quoted, "quoted (the id of the message to quote)", 1, 128)
    end
    if opts.link_preview ~= nil then
      if type(opts.link_preview) ~= "boolean" then
        fail("%s: link_preview must be true or false, got %s", fname, describe(opts.link_preview))
      end
      action.link_preview = opts.link_preview
    end
  end
  queue_action(fname, action)
end)

local CRM_OPS = { contact_upsert = true, activity = true, lead_score = true, task = true }

M.crm = host("wahook.crm", IN_HANDLER, function(fname, op, fields)
  if not (type(op) == "string" and CRM_OPS[op]) then
    fail("%s: unknown operation %s (allowed: contact_upsert, activity, lead_score, task)", fname,
         describe(op))
  end
  if not is_table(fields) then fail("%s: fields must be a table, got %s", fname, describe(fields)) end
  local j = to_json(fname, fields, "fields", LIMITS.payload_bytes)
  if is_list(j) then fail("%s: fields must be a table with string keys, not a list", fname) end
  queue_action(fname, { type = "crm", op = op, fields = j })
end)

M.alert = host("wahook.alert", IN_HANDLER, function(fname, kind, text, fields)
  check_string(fname, kind, "kind", 1, 64)
  if not kind:match("^[%w_%.%-]+$") then
    fail("%s: kind must use letters, digits, '_', '.' and '-' only, got \"%s\"", fname, kind)
  end
  check_string(fname, text, "text", 1, MAX_TEXT)
  if fields ~= nil and not is_table(fields) then
    fail("%s: fields must be a table or nil, got %s", fname, describe(fields))
  end
  local action = { type = "alert", kind = kind, text = text }
  if is_table(fields) then
    local j = to_json(fname, fields, "fields", LIMITS.payload_bytes)
    if is_list(j) then fail("%s: fields must be a table with string keys, not a list", fname) end
    action.fields = j
  end
  queue_action(fname, action)
end)

local function email_ok(s)
  local at = s:find("@", 1, true)
  if #s < 3 or #s > 254 or not at or at == 1 or at == #s or s:find("@", at + 1, true) then
    return false
  end
  return not s:find('[%z\1-\32\127<>,;"()%[%]\\]')
end

local function b64_size(s)
  local n = #s
  if n == 0 or n % 4 ~= 0 then return nil end
  local pad = 0
  for i = 1, n do
    local ch = s:sub(i, i)
    if ch == "=" then
      if i < n - 1 or (i == n - 1 and s:sub(n, n) ~= "=") then return nil end
      pad = pad + 1
    elseif not ch:match("[%w+/]") then
      return nil
    end
  end
  return n // 4 * 3 - pad
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64_encode(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = (a << 16) | ((b or 0) << 8) | (c or 0)
    local q = {}
    for k = 1, 4 do
      local idx = (n >> (6 * (4 - k))) & 63
      q[k] = B64:sub(idx + 1, idx + 1)
    end
    if not b then q[3], q[4] = "=", "=" elseif not c then q[4] = "=" end
    out[#out + 1] = table.concat(q)
  end
  return table.concat(out)
end

local function mime_ok(s)
  local slash = s:find("/", 1, true)
  if #s < 3 or #s > 127 or not slash or slash == 1 or slash == #s then return false end
  return not s:find("[^%w/%+%-%.!#%$&%^_;= ]")
end

local function attachment(fname, i, a)
  local what = string.format("%s attachment %d", fname, i)
  if not is_table(a) then
    fail("%s must be a table {filename, content_type, data | data_url}, got %s", what, describe(a))
  end
  check_keys(a, { "filename", "content_type", "data", "data_url" }, what)
  local filename = check_string(fname, rawget(a, "filename"), "attachment filename", 1, 255)
  if filename:find('[%z\1-\31/\\"]') then
    fail("%s: filename must not contain '/', '\\', '\"' or control characters", what)
  end
  local data, url = rawget(a, "data"), rawget(a, "data_url")
  if (data ~= nil) == (url ~= nil) then
    fail("%s needs exactly one of data (a string) or data_url (\"data:…;base64,…\")", what)
  end
  local out, size, ctype = { filename = filename }, 0, nil
  if data ~= nil then
    if type(data) ~= "string" then fail("%s: data must be a string", what) end
    size = #data
    out.data_base64 = b64_encode(data)
  else
    local comma = type(url) == "string" and url:find(",", 1, true)
    local marker = ";base64"
    if type(url) ~= "string" or #url < 5 or url:sub(1, 5) ~= "data:" or not comma
       or comma - 1 < 5 + #marker or url:sub(comma - #marker, comma - 1) ~= marker then
      fail("%s: data_url must look like \"data:image/png;base64,…\"", what)
    end
    local b64 = url:sub(comma + 1)
    size = b64_size(b64)
    if not size then fail("%s: data_url does not carry valid base64", what) end
    local ct = url:sub(6, comma - #marker - 1)
    if #ct > 0 then ctype = ct end
    out.data_base64 = b64
  end
  if rawget(a, "content_type") ~= nil then
    ctype = check_string(fname, rawget(a, "content_type"), "attachment content_type", 1, 127)
  end
  ctype = ctype or "application/octet-stream"
  if not mime_ok(ctype) then
    fail("%s: content_type must be a media type such as \"application/pdf\"", what)
  end
  out.content_type = ctype
  return out, size
end

M.mail = host("wahook.mail", IN_HANDLER, function(fname, to, subject, body, attachments)
  local list = {}
  if type(to) == "string" then
    list[1] = to
  elseif is_table(to) then
    local n = rawlen(to)
    if n == 0 or n > MAX_RECIPIENTS then
      fail("%s: 'to' must list 1..%d addresses", fname, MAX_RECIPIENTS)
    end
    for i = 1, n do
      local v = rawget(to, i)
      if type(v) ~= "string" then fail("%s: 'to' entry %d is not a string", fname, i) end
      list[i] = v
    end
  else
    fail("%s: 'to' must be an e-mail address or a list of them, got %s", fname, describe(to))
  end
  for _, addr in ipairs(list) do
    if not email_ok(addr) then fail("%s: \"%s\" is not an e-mail address", fname, addr:sub(1, 80)) end
  end
  check_string(fname, subject, "subject", 1, 998)
  if subject:find("[\r\n]") then fail("%s: subject must be a single line", fname) end
  check_string(fname, body, "body", 0, LIMITS.mail_bytes)
  local atts, total = {}, #body
  if attachments ~= nil then
    if not is_table(attachments) then
      fail("%s: attachments must be a list of tables, got %s", fname, describe(attachments))
    end
    local n = rawlen(attachments)
    if n > MAX_ATTACHMENTS then fail("%s: at most %d attachments per mail", fname, MAX_ATTACHMENTS) end
    for i = 1, n do
      local a, size = attachment(fname, i, rawget(attachments, i))
      atts[i] = a
      total = total + size
    end
  end
  if total > LIMITS.mail_bytes then
    fail("%s: the mail is too large: %d bytes with attachments, the limit is %d", fname, total,
         LIMITS.mail_bytes)
  end
  if #atts == 0 then setmetatable(atts, ARRAY_MT) end
  queue_action(fname, { type = "mail", to = list, subject = subject, body = body, attachments = atts })
end)

-- ---- timers ---------------------------------------------------------------------------------

local function timer_name(fname, v)
  check_string(fname, v, "the timer name", 1, MAX_TIMER_NAME)
  if v:find("[%z\1-\31\127]") then
    fail("%s: the timer name must not contain control characters", fname)
  end
  return v
end

local function find_name(list, name)
  for i, v in ipairs(list) do
    if v == name or (type(v) == "table" and v.name == name) then return i end
  end
  return nil
end

local function too_many_timers(fname)
  fail("%s: too many timers: a handler may set or cancel at most %d per event", fname, LIMITS.timers)
end

M.after = host("wahook.after", IN_HANDLER, function(fname, seconds, name, payload)
  if type(seconds) ~= "number" or not (seconds > 0) or seconds > MAX_TIMER_SECONDS then
    fail("%s: seconds must be a number > 0 and at most %.0f (30 days), got %s", fname,
         MAX_TIMER_SECONDS, describe(seconds))
  end
  timer_name(fname, name)
  if payload ~= nil and not is_table(payload) then
    fail("%s: payload must be a table or nil, got %s", fname, describe(payload))
  end
  local j
  if is_table(payload) then
    j = to_json(fname, payload, "payload", LIMITS.payload_bytes)
    if is_list(j) then fail("%s: payload must be a table with string keys, not a list", fname) end
  end
  local ms = math.floor(seconds * 1000 + 0.5)
  local set_at, cancel_at = find_name(S.timers, name), find_name(S.cancelled, name)
  if not set_at and not cancel_at and #S.timers + #S.cancelled >= LIMITS.timers then
    too_many_timers(fname)
  end
  if set_at then table.remove(S.timers, set_at) end
  if cancel_at then table.remove(S.cancelled, cancel_at) end
  S.timers[#S.timers + 1] = { name = name, due_at = S.now_ms + math.max(ms, 1), payload = j }
end)

M.cancel = host("wahook.cancel", IN_HANDLER, function(fname, name)
  timer_name(fname, name)
  local set_at = find_name(S.timers, name)
  if find_name(S.cancelled, name) then return end
  if not set_at and #S.timers + #S.cancelled >= LIMITS.timers then too_many_timers(fname) end
  S.cancelled[#S.cancelled + 1] = name
  if set_at then table.remove(S.timers, set_at) end
end)

-- ---- state and facts ------------------------------------------------------------------------

local function current_state()
  if S.change == "set" then return S.state end
  if S.change == "cleared" then return nil end
  return S.prior
end

M.state = {}

M.state.get = host("wahook.state.get", IN_HANDLER, function()
  local cur = current_state()
  if cur == nil then return {} end
  return copy(cur)
end)

M.state.set = host("wahook.state.set", IN_HANDLER, function(fname, ...)
  local tbl = ...
  if tbl == nil then
    S.change, S.state = "cleared", nil
    return
  end
  if not is_table(tbl) then
    fail("%s: state must be a table (or nil to clear it), got %s", fname, describe(tbl))
  end
  local j = to_json(fname, tbl, "state", LIMITS.state_bytes)
  if is_list(j) then fail("%s: state must be a table with string keys, not a list", fname) end
  S.change, S.state = "set", j
end)

local STRING, COUNT, NUMBER, SCALAR = 1, 2, 3, 4
local KINDS = {
  bot_reply = { fields = { { "in_reply_to", STRING, true }, { "latency_ms", COUNT, false } } },
  handoff = { fields = { { "reason", STRING, false } } },
  lead = { need_any = true, fields = { { "score", NUMBER, false }, { "stage", STRING, false } } },
  csat = { fields = { { "score", NUMBER, true } } },
  custom = { fields = { { "name", STRING, true }, { "value", SCALAR, true } } },
}

local function check_fact(kind, spec, fields)
  local names = {}
  for i, f in ipairs(spec.fields) do names[i] = f[1] end
  local list = table.concat(names, ", ")
  for key, v in next, fields do
    local f
    for _, cand in ipairs(spec.fields) do
      if cand[1] == key then f = cand end
    end
    if not f then
      return string.format("unknown field '%s' for kind '%s' (allowed: %s)", key:sub(1, 60), kind, list)
    end
    if f[2] == STRING then
      if type(v) ~= "string" or #v == 0 or #v > MAX_FACT_STRING then
        return string.format("%s must be a non-empty string of at most %d bytes", key, MAX_FACT_STRING)
      end
    elseif f[2] == COUNT then
      local whole = math.type(v) == "integer"
                    or (math.type(v) == "float" and v == math.floor(v) and v < 9e15)
      if not whole or v < 0 then return string.format("%s must be an integer >= 0", key) end
      fields[key] = math.tointeger(v)
    elseif f[2] == NUMBER then
      if type(v) ~= "number" then return string.format("%s must be a number", key) end
    elseif f[2] == SCALAR then
      if not (type(v) == "number" or type(v) == "boolean"
              or (type(v) == "string" and #v <= MAX_FACT_STRING)) then
        return string.format("%s must be a string, a number or a boolean", key)
      end
    end
  end
  for _, f in ipairs(spec.fields) do
    if f[3] and fields[f[1]] == nil then
      return string.format("kind '%s' needs the field %s", kind, f[1])
    end
  end
  if spec.need_any and next(fields) == nil then
    return string.format("kind '%s' needs at least one of: %s", kind, list)
  end
  return nil
end

M.record = host("wahook.record", IN_HANDLER, function(fname, kind, fields)
  local spec = type(kind) == "string" and KINDS[kind] or nil
  if not spec then
    fail("%s: unknown kind %s (allowed: bot_reply, handoff, lead, csat, custom)", fname, describe(kind))
  end
  if fields ~= nil and not is_table(fields) then
    fail("%s: fields must be a table, got %s", fname, describe(fields))
  end
  local j = {}
  if is_table(fields) then
    j = to_json(fname, fields, "fields", 4096)
    if is_list(j) and #j > 0 then fail("%s: fields must be a table with string keys, not a list", fname) end
    if is_list(j) then j = {} end
  end
  local msg = check_fact(kind, spec, j)
  if msg then fail("%s('%s'): %s", fname, kind, msg) end
  if #S.facts >= LIMITS.facts then
    fail("%s: too many facts: a handler may record at most %d per event", fname, LIMITS.facts)
  end
  S.facts[#S.facts + 1] = { kind = kind, fields = j }
end)

-- ---- util: log, metric, time, config --------------------------------------------------------

local function log_at(level)
  return function(fname, msg, fields)
    if type(msg) ~= "string" and type(msg) ~= "number" then
      fail("%s: the message must be a string, got %s", fname, describe(msg))
    end
    msg = tostring(msg)
    if fields ~= nil and not is_table(fields) then
      fail("%s: fields must be a table or nil, got %s", fname, describe(fields))
    end
    local j
    if fields ~= nil then
      j = to_json(fname, fields, "fields", MAX_LOG_FIELDS)
      if is_list(j) and #j == 0 then
        j = nil
      elseif is_list(j) then
        fail("%s: fields must be a table with string keys", fname)
      end
    end
    if #msg > MAX_LOG_MSG then
      local n = MAX_LOG_MSG
      while n > 0 and (msg:byte(n + 1) & 0xc0) == 0x80 do n = n - 1 end
      msg = msg:sub(1, n)
    end
    if not utf8.len(msg) then msg = "(log message is not valid UTF-8)" end
    S.logs[#S.logs + 1] = { level = level, msg = msg, fields = j or {} }
  end
end

M.log = {
  info = host("wahook.log.info", ANYWHERE, log_at("info")),
  warn = host("wahook.log.warn", ANYWHERE, log_at("warn")),
  error = host("wahook.log.error", ANYWHERE, log_at("error")),
}

local function ident_ok(s)
  return type(s) == "string" and #s > 0 and #s <= 64 and s:match("^[%a_][%w_]*$") ~= nil
end

local function labels_key(labels)
  local keys = {}
  for k in next, labels do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "\0" .. labels[k] end
  return table.concat(parts, "\1")
end

M.metric = {
  inc = host("wahook.metric.inc", IN_HANDLER_OR_DELIVER, function(fname, name, labels)
    if not ident_ok(name) then
      fail("%s: the metric name must be letters, digits and _ (at most 64), got %s", fname, describe(name))
    end
    if labels ~= nil and not is_table(labels) then
      fail("%s: labels must be a table or nil, got %s", fname, describe(labels))
    end
    local j = {}
    if labels ~= nil then
      j = to_json(fname, labels, "labels", 4096)
      if is_list(j) and #j == 0 then
        j = {}
      elseif is_list(j) then
        fail("%s: labels must be a table with string keys", fname)
      else
        local n = 0
        for _ in next, j do n = n + 1 end
        if n > MAX_LABELS then fail("%s: at most %d labels", fname, MAX_LABELS) end
        for k, v in next, j do
          if not ident_ok(k) then
            fail("%s: label name '%s' must be letters, digits and _", fname, k:sub(1, 60))
          end
          if type(v) == "string" then
            if #v > 128 then fail("%s: label %s is longer than 128 bytes", fname, k) end
          elseif math.type(v) == "integer" then
            j[k] = string.format("%d", v)
          elseif type(v) == "number" then
            j[k] = string.format("%.14g", v)
          elseif type(v) == "boolean" then
            j[k] = tostring(v)
          else
            fail("%s: label %s must be a string, a number or a boolean", fname, k)
          end
        end
      end
    end
    local key = name .. "\2" .. labels_key(j)
    for _, m in ipairs(S.metrics) do
      if m._key == key then
        m.value = m.value + 1
        return
      end
    end
    if #S.metrics >= LIMITS.metrics then
      fail("%s: too many metrics: a handler may count at most %d distinct name and label sets per event",
           fname, LIMITS.metrics)
    end
    S.metrics[#S.metrics + 1] = { name = name, labels = j, value = 1, _key = key }
  end),
}

M.now = host("wahook.now", ANYWHERE, function()
  return S.now_ms / 1000
end)

local function zone_arg(fname, v)
  return check_string(fname, v, 'the time zone (e.g. "Europe/Madrid")', 1, 128)
end

-- Runs a wahook_pure function, turning its zone errors into the host module's wording.
local function tz_call(fname, zone, f, ...)
  local ok, res = pcall(f, ...)
  if ok then return res end
  local msg = tostring(res)
  if msg:find("unknown time zone", 1, true) then
    fail('%s: unknown time zone "%s"', fname, zone:sub(1, 80))
  elseif msg:find("invalid time zone", 1, true) or msg:find("time out of range", 1, true) then
    -- The C side reports every WH_EINVAL of wh_tz_* (a time out of range too) this way.
    fail('%s: invalid time zone "%s"', fname, zone:sub(1, 80))
  end
  fail('%s: time zone "%s": %s', fname, zone:sub(1, 80), msg)
end

M.localtime = host("wahook.localtime", ANYWHERE, function(fname, zone, t)
  zone_arg(fname, zone)
  if t == nil then
    t = S.now_ms // 1000
  elseif type(t) == "number" then
    if math.type(t) == "float" then
      local d = math.floor(t)
      if not (d > -1e15 and d < 1e15) then fail("%s: t is out of range", fname) end
      t = math.tointeger(d)
    end
  else
    fail("%s: t must be seconds since the epoch, got %s", fname, describe(t))
  end
  return tz_call(fname, zone, pure().localtime, zone, t)
end)

local MKTIME_KEYS = { "year", "month", "day", "hour", "min", "sec", "wday", "yday", "isdst", "zone",
                      "utc_offset" }
local MKTIME_WANT = { { "year", true }, { "month", true }, { "day", true }, { "hour", false },
                      { "min", false }, { "sec", false } }

M.mktime = host("wahook.mktime", ANYWHERE, function(fname, zone, fields)
  zone_arg(fname, zone)
  if not is_table(fields) then
    fail("%s: fields must be a table {year, month, day, hour, min, sec}, got %s", fname,
         describe(fields))
  end
  check_keys(fields, MKTIME_KEYS, "wahook.mktime fields")
  local tm = {}
  for _, w in ipairs(MKTIME_WANT) do
    local v = rawget(fields, w[1])
    local iv = type(v) == "number" and math.tointeger(v) or nil
    if v == nil and not w[2] then
      iv = 0
    elseif not iv or iv < -1000000 or iv > 1000000 then
      fail("%s: %s must be an integer, got %s", fname, w[1], describe(v))
    end
    tm[w[1]] = iv
  end
  return tz_call(fname, zone, pure().mktime, zone, tm)
end)

-- ---- http (deliverers only) -----------------------------------------------------------------

local function path_ok(s)
  if #s == 0 or s:sub(1, 1) ~= "/" or s:sub(2, 2) == "/" then return false end
  if s:find("[%z\1-\32\127-\255\\#]") then return false end
  local q = s:find("?", 1, true)
  local p = q and s:sub(1, q - 1) or s
  for i = 1, #p - 1 do
    if p:sub(i, i + 1) == ".." and (i == 1 or p:sub(i - 1, i - 1) == "/")
       and (i + 2 > #p or p:sub(i + 2, i + 2) == "/") then
      return false
    end
  end
  return true
end

local METHODS = { "GET", "POST", "PUT", "PATCH", "DELETE" }

M.http = {
  request = host("wahook.http.request", IN_DELIVER, function(fname, req)
    if not is_table(req) then
      fail("%s: expects a table {method, url, headers, body, timeout}, got %s", fname, describe(req))
    end
    check_keys(req, { "method", "url", "headers", "body", "timeout" }, "wahook.http.request")
    local method = "GET"
    if req.method ~= nil then
      local m = check_string(fname, req.method, "method", 1, 8)
      method = nil
      for _, cand in ipairs(METHODS) do
        if m:upper() == cand then method = cand end
      end
      if not method then
        fail('%s: method must be GET, POST, PUT, PATCH or DELETE, got "%s"', fname, m)
      end
    end
    local url = check_string(fname, req.url, "url", 1, MAX_URL)
    if not path_ok(url) then
      fail('%s: url must be a path under the target\'s base URL, like "/rest/people?limit=1" '
           .. '(no scheme, no "..", no spaces), got "%s"', fname, url:sub(1, 80))
    end
    local timeout_ms = 10000
    if req.timeout ~= nil then
      local t = req.timeout
      if type(t) ~= "number" or not (t > 0) or t > MAX_HTTP_TIMEOUT then
        fail("%s: timeout must be seconds > 0 and at most %.0f, got %s", fname, MAX_HTTP_TIMEOUT,
             describe(t))
      end
      timeout_ms = math.ceil(t * 1000)
    end
    local h, body = req.headers, req.body
    if h ~= nil and not is_table(h) then
      fail("%s: headers must be a table, got %s", fname, describe(h))
    end
    if body ~= nil and type(body) ~= "string" and not is_table(body) then
      fail("%s: body must be a string or a table (sent as JSON), got %s", fname, describe(body))
    end
    if type(body) == "string" and #body > MAX_BODY then
      fail("%s: body is larger than %d bytes", fname, MAX_BODY)
    end
    local headers = {}
    if h ~= nil then
      local j = to_json(fname, h, "headers", 65536)
      if is_list(j) and #j > 0 then fail("%s: headers must be a table of name = value", fname) end
      local n = 0
      for k, v in next, j do
        n = n + 1
        if n > MAX_HEADERS then fail("%s: at most %d headers", fname, MAX_HEADERS) end
        if #k == 0 or #k > 128 or k:find("[^%w!#%$%%&'%*%+%-%.%^_`|~]") then
          fail("%s: header name '%s' is not a valid HTTP token", fname, k:sub(1, 60))
        end
        if math.type(v) == "integer" then
          v = string.format("%d", v)
        elseif type(v) == "number" then
          v = string.format("%.14g", v)
        elseif type(v) ~= "string" then
          fail("%s: header %s must be a string", fname, k:sub(1, 60))
        end
        if #v > 8192 or v:find("[\r\n%z]") then
          fail("%s: header %s must be one line of at most 8192 bytes", fname, k:sub(1, 60))
        end
        headers[k] = v
      end
    end
    local out = { method = method, url = url, headers = headers, timeout_ms = timeout_ms }
    if type(body) == "string" then
      out.body = body
    elseif body ~= nil then
      out.json = to_json(fname, body, "body", MAX_BODY)
      local c = cjson()
      out.body = c and c.encode(out.json) or nil
      local has_ct = false
      for k in next, headers do has_ct = has_ct or k:lower() == "content-type" end
      if not has_ct then headers["Content-Type"] = "application/json" end
    end
    S.requests[#S.requests + 1] = out
    if not S.http then return nil, "http is not available" end
    return S.http(out)
  end),
}

M.version = "0.1.0"
M.config = readonly({}, "wahook.config")

-- ---- test helpers ---------------------------------------------------------------------------

M._null = null()

function M._install()
  package.loaded.wahook = M
  return M
end

function M._reset(opts)
  opts = opts or {}
  local phase = opts.phase or "handler"
  assert(PHASES[phase], "unknown phase " .. tostring(phase))
  local now = opts.now or 1761141807
  S = {
    phase = "handler", now_ms = math.floor(now * 1000 + 0.5), prior = nil, change = "unchanged",
    state = nil, actions = {}, timers = {}, cancelled = {}, facts = {}, metrics = {}, logs = {},
    requests = {}, http = opts.http,
  }
  -- Argument errors of the helpers are plain strings, as busted shows them best.
  local function json(v, root, max)
    local ok, res = pcall(to_json, "wahook_fake._reset", v, root, max)
    if ok then return res end
    error(getmetatable(res) == API_ERR and res.msg or res, 3)
  end
  if opts.state ~= nil then
    local j = json(opts.state, "state", LIMITS.state_bytes)
    if is_list(j) then error("wahook_fake._reset: state must be a table with string keys", 2) end
    S.prior = j
  end
  M.config = readonly(json(opts.config or {}, "wahook.config", 0), "wahook.config")
  S.phase = phase
  return M
end

function M._set_now(t)
  S.now_ms = math.floor(t * 1000 + 0.5)
end

function M._outcome()
  local metrics = {}
  for i, m in ipairs(S.metrics) do
    metrics[i] = { name = m.name, labels = copy(m.labels), value = m.value }
  end
  local timers = {}
  for i, t in ipairs(S.timers) do
    timers[i] = { name = t.name, due_at = t.due_at, payload = copy(t.payload) }
  end
  local state = { change = S.change }
  if S.change == "set" then state.value = copy(S.state) end
  return {
    actions = copy(S.actions), timers = timers, cancelled = copy(S.cancelled), state = state,
    facts = copy(S.facts), metrics = metrics,
  }
end

function M._logs()
  return copy(S.logs)
end

function M._requests()
  return copy(S.requests)
end

M._reset()
return M
