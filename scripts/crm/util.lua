-- Helpers shared by the CRM mapping modules (crm.twenty, crm.generic_rest): SHA-1 and name-based
-- UUIDs (version 5, RFC 9562 §5.5) in pure Lua, random UUIDs, URL encoding, WhatsApp phone
-- numbers (digits, calling code split), ISO-8601 times, and the classification of HTTP answers
-- into the error tables the CRM runner understands ({retry|permanent|misconfigured = true,
-- message = …, retry_after = seconds}).
local M = {}

-- ---- SHA-1 (FIPS 180-4), for UUIDv5 -----------------------------------------------------------

local MASK = 0xffffffff

local function rol(x, n)
  return ((x << n) | (x >> (32 - n))) & MASK
end

-- The 20-byte SHA-1 digest of the string s.
function M.sha1(s)
  local h0, h1, h2, h3, h4 = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
  local msg = s .. "\128" .. string.rep("\0", (55 - #s) % 64) .. string.pack(">I8", #s * 8)
  local w = {}
  for chunk = 1, #msg, 64 do
    for i = 0, 15 do
      w[i] = string.unpack(">I4", msg, chunk + i * 4)
    end
    for i = 16, 79 do
      w[i] = rol(w[i - 3] ~ w[i - 8] ~ w[i - 14] ~ w[i - 16], 1)
    end
    local a, b, c, d, e = h0, h1, h2, h3, h4
    for i = 0, 79 do
      local f, k
      if i < 20 then
        f, k = (b & c) | (~b & d), 0x5A827999
      elseif i < 40 then
        f, k = b ~ c ~ d, 0x6ED9EBA1
      elseif i < 60 then
        f, k = (b & c) | (b & d) | (c & d), 0x8F1BBCDC
      else
        f, k = b ~ c ~ d, 0xCA62C1D6
      end
      a, b, c, d, e = (rol(a, 5) + (f & MASK) + e + k + w[i]) & MASK, a, rol(b, 30), c, d
    end
    h0, h1, h2 = (h0 + a) & MASK, (h1 + b) & MASK, (h2 + c) & MASK
    h3, h4 = (h3 + d) & MASK, (h4 + e) & MASK
  end
  return string.pack(">I4I4I4I4I4", h0, h1, h2, h3, h4)
end

function M.hex(bytes)
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- ---- UUIDs --------------------------------------------------------------------------------------

-- The namespaces of RFC 9562 appendix A.
M.NS = {
  dns = "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
  url = "6ba7b811-9dad-11d1-80b4-00c04fd430c8",
}

local function uuid_bytes(u)
  if type(u) ~= "string" then return nil end
  local h = u:lower():gsub("-", "")
  if #h ~= 32 or h:find("[^0-9a-f]") then return nil end
  return (h:gsub("..", function(x) return string.char(tonumber(x, 16)) end))
end

local function format_uuid(b)
  local h = M.hex(b)
  return string.format("%s-%s-%s-%s-%s", h:sub(1, 8), h:sub(9, 12), h:sub(13, 16), h:sub(17, 20),
                       h:sub(21, 32))
end

-- 1 when u is a UUID in the canonical 8-4-4-4-12 hex form.
function M.is_uuid(u)
  return type(u) == "string" and
         u:match("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$") ~= nil
end

-- The version-5 (SHA-1, name-based) UUID of name in namespace ns (a UUID string).
function M.uuid5(ns, name)
  local nsb = uuid_bytes(ns)
  assert(nsb, "uuid5: the namespace must be a UUID")
  local d = M.sha1(nsb .. name)
  local b = { d:byte(1, 16) }
  b[7] = (b[7] & 0x0f) | 0x50
  b[9] = (b[9] & 0x3f) | 0x80
  return format_uuid(string.char(table.unpack(b)))
end

-- A random (version 4) UUID. math.random is seeded per VM by Lua 5.4; callers that need a
-- stable id across attempts store it in ctx.progress before they use it.
function M.uuid4()
  local b = {}
  for i = 1, 16 do b[i] = math.random(0, 255) end
  b[7] = (b[7] & 0x0f) | 0x40
  b[9] = (b[9] & 0x3f) | 0x80
  return format_uuid(string.char(table.unpack(b)))
end

-- ---- URLs -------------------------------------------------------------------------------------

-- Percent-encodes everything but the unreserved characters (so "+" becomes %2B, "[" %5B, …).
function M.urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- ---- phone numbers ----------------------------------------------------------------------------

-- The digits of an international number ("+34 600 11 12 22", "0034600111222",
-- "34600111222@s.whatsapp.net", "34600111222:7@s.whatsapp.net"), or nil when it is not one.
function M.phone_digits(v)
  if math.type(v) == "integer" then v = string.format("%d", v) end
  if type(v) ~= "string" then return nil end
  local s = v:gsub("@.*$", ""):gsub(":%d+$", "")
  s = s:gsub("[%s%-%.%(%)/]", "")
  if s:sub(1, 1) == "+" then
    s = s:sub(2)
  elseif s:sub(1, 2) == "00" then
    s = s:sub(3)
  end
  if not s:match("^[1-9]%d+$") or #s < 7 or #s > 15 then return nil end
  return s
end

-- ITU-T E.164 country calling codes are prefix-free: "1" (NANP) and "7" have one digit, the
-- codes below two, every other assigned code three.
local CC2 = {}
for _, c in ipairs({
  "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47",
  "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65",
  "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
}) do CC2[c] = true end

-- Splits international digits into the calling code and the national number:
-- "5511987654321" → "55", "11987654321" (Twenty stores the national number and "+55").
function M.split_phone(d)
  local cc
  if d:sub(1, 1) == "1" or d:sub(1, 1) == "7" then
    cc = d:sub(1, 1)
  elseif CC2[d:sub(1, 2)] then
    cc = d:sub(1, 2)
  else
    cc = d:sub(1, 3)
  end
  return cc, d:sub(#cc + 1)
end

-- ---- times ------------------------------------------------------------------------------------

-- Epoch seconds from a number of seconds or milliseconds; nil otherwise.
function M.epoch(v)
  if type(v) ~= "number" or v ~= v or v <= 0 then return nil end
  if v > 1e11 then v = v / 1000 end
  return math.floor(v)
end

-- ISO-8601 UTC ("2026-01-05T10:02:00Z") of epoch seconds/ms, or an ISO string as it is.
function M.iso8601(v)
  if type(v) == "string" and v:match("^%d%d%d%d%-%d%d%-%d%d") then return v end
  local t = M.epoch(v)
  return t and os.date("!%Y-%m-%dT%H:%M:%SZ", t) or nil
end

-- ---- JSON values ------------------------------------------------------------------------------

-- v when it is a non-empty string (JSON null, numbers and tables give nil).
function M.str(v)
  if type(v) == "string" and v ~= "" then return v end
  return nil
end

-- ---- HTTP answers -----------------------------------------------------------------------------

function M.ok(resp)
  return resp.status >= 200 and resp.status < 300
end

-- A short description of an error answer: Twenty's {error, messages[]} or the body's start.
function M.detail(resp)
  local j = resp.json
  if type(j) == "table" then
    local parts = {}
    if type(j.error) == "string" then parts[#parts + 1] = j.error end
    if type(j.messages) == "table" then
      for _, m in ipairs(j.messages) do
        if type(m) == "string" then parts[#parts + 1] = m end
      end
    elseif type(j.message) == "string" then
      parts[#parts + 1] = j.message
    end
    if #parts > 0 then return table.concat(parts, ": ") end
  end
  local b = type(resp.body) == "string" and resp.body or ""
  return #b > 300 and (b:sub(1, 300) .. "…") or b
end

-- Seconds the peer asked to wait (Retry-After header, or Twenty's retryAfterSeconds), or nil.
function M.retry_after(resp)
  local h = resp.headers and resp.headers["retry-after"]
  local n = tonumber(h)
  if n and n >= 0 then return n end
  local j = resp.json
  if type(j) == "table" and type(j.retryAfterSeconds) == "number" then return j.retryAfterSeconds end
  return nil
end

-- The error table for a failed answer, by the delivery rules: 401/403/404 the target is
-- misconfigured (bad key, wrong URL), 408/429/5xx retry (honouring Retry-After), other 4xx are
-- about this one action (permanent), anything else retry.
function M.http_error(resp, what)
  local s = resp.status
  local d = M.detail(resp)
  local e = { status = s, message = string.format("%s: HTTP %d%s", what, s, d ~= "" and (": " .. d) or "") }
  if s == 401 or s == 403 or s == 404 then
    e.misconfigured = true
  elseif s == 408 or s == 429 or s >= 500 then
    e.retry = true
    e.retry_after = M.retry_after(resp)
  elseif s >= 400 then
    e.permanent = true
  else
    e.retry = true
  end
  return e
end

-- Raises the classified error for resp.
function M.raise(resp, what)
  error(M.http_error(resp, what), 0)
end

-- Raises a permanent error about the action's own fields.
function M.bad_input(fmt, ...)
  error({ permanent = true, message = string.format(fmt, ...) }, 0)
end

-- wahook.http.request that raises a retry error when the transfer itself failed.
function M.request(http, req, what)
  local resp, err = http.request(req)
  if not resp then
    error({ retry = true, message = string.format("%s: %s", what, tostring(err)) }, 0)
  end
  return resp
end

return M
