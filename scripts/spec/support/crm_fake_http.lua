-- Test support for the CRM mapping specs: a driver that runs a module's deliver (or
-- deliver_batch) as a coroutine exactly the way runtime/crm_runner.c does — every
-- wahook.http.request yields the request, ctx.progress is saved as JSON before each request is
-- "sent", and a crash can be simulated before or after any request — plus two in-memory peers
-- that answer those requests and record them: a fake Twenty (people, notes, noteTargets, tasks,
-- taskTargets with the reference's phone normalisation, filters, upsert, both link-field names,
-- error shapes) and a fake generic REST CRM.
--
--   local H = require "spec.support.crm_fake_http"
--   local server = H.twenty{ link_field = "personId" }
--   local res = H.run(require "crm.twenty", "activity", {phone = …}, {server = server})
--   res.status ("done" | "failed" | "crashed"), res.err, res.result, res.progress (JSON),
--   res.requests (count), server.log ({method, path, query, json}…)
local cjson = require "cjson"
local wahook = require("spec.support.wahook_fake")._install()

local H = {}

H.null = cjson.null

-- ---- the driver -------------------------------------------------------------------------------

-- Runs mod.deliver(op, fields, ctx) (op "batch": mod.deliver_batch(fields, ctx)) against
-- opts.server. opts: progress (JSON text from an earlier run), instance ("acme"), contact,
-- config (wahook.config), now (epoch s), crash_before(req, n) / crash_after(req, n, resp) →
-- true to stop there, as a kill -9 would.
function H.run(mod, op, fields, opts)
  opts = opts or {}
  local progress = opts.progress and cjson.decode(opts.progress) or {}
  local ctx = { progress = progress, instance = opts.instance or "acme", contact = opts.contact,
                target = { name = "crm" } }
  wahook._reset { phase = "deliver", now = opts.now, config = opts.config or {},
                  http = function(req) return coroutine.yield(req) end }
  local co = coroutine.create(function()
    if op == "batch" then return mod.deliver_batch(fields, ctx) end
    return mod.deliver(op, fields, ctx)
  end)
  local res = { requests = 0, sent = {} }
  local args = table.pack()
  for _ = 1, 500 do
    local r = table.pack(coroutine.resume(co, table.unpack(args, 1, args.n)))
    if not r[1] then
      res.status, res.err = "failed", r[2]
      res.progress = cjson.encode(ctx.progress)
      return res
    end
    if coroutine.status(co) == "dead" then
      res.status, res.result = "done", r[2]
      res.progress = cjson.encode(ctx.progress)
      return res
    end
    local req = r[2]
    assert(type(req) == "table" and req.method, "deliver yielded something that is not a request")
    res.requests = res.requests + 1
    res.sent[#res.sent + 1] = req
    -- What the runner persists before the request goes out.
    res.progress = cjson.encode(ctx.progress)
    if opts.crash_before and opts.crash_before(req, res.requests) then
      res.status = "crashed"
      return res
    end
    local resp, err
    if opts.transport_error and opts.transport_error(req, res.requests) then
      resp, err = nil, "connection refused"
    else
      resp = opts.server:handle(req)
    end
    if opts.crash_after and opts.crash_after(req, res.requests, resp) then
      res.status = "crashed"
      return res
    end
    args = table.pack(resp, err)
  end
  error("deliver made more than 500 requests")
end

-- ---- shared HTTP plumbing ---------------------------------------------------------------------

local function urldecode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function split_url(url)
  local path, q = url:match("^([^?]*)%??(.*)$")
  local query = {}
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    query[urldecode(k)] = urldecode(v)
  end
  return path, query
end

local function answer(status, obj, headers)
  local h = { ["content-type"] = "application/json; charset=utf-8" }
  for k, v in pairs(headers or {}) do h[k] = v end
  local body = cjson.encode(obj)
  return { status = status, headers = h, body = body, json = cjson.decode(body) }
end

local function err400(msg, kind)
  return answer(400, { statusCode = 400, error = kind or "BadRequestException", messages = { msg } })
end

local function base(server)
  server.log = {}
  server.failures = {}
  -- Queues an answer for the next request whose method matches and whose path starts with
  -- prefix: status plus an optional JSON body and headers.
  function server:fail(method, prefix, status, obj, headers)
    self.failures[#self.failures + 1] = { method = method, prefix = prefix, status = status,
                                          obj = obj, headers = headers }
  end
  function server:count(method, prefix)
    local n = 0
    for _, r in ipairs(self.log) do
      if (method == nil or r.method == method) and r.path:sub(1, #prefix) == prefix then n = n + 1 end
    end
    return n
  end
  function server:handle(req)
    local path, query = split_url(req.url)
    local json = req.body and cjson.decode(req.body) or nil
    self.log[#self.log + 1] = { method = req.method, url = req.url, path = path, query = query,
                                json = json, headers = req.headers }
    for i, f in ipairs(self.failures) do
      if f.method == req.method and path:sub(1, #f.prefix) == f.prefix then
        table.remove(self.failures, i)
        return answer(f.status, f.obj or { statusCode = f.status, error = "Injected", messages = { "injected" } },
                      f.headers)
      end
    end
    return self:route(req.method, path, query, json)
  end
  return server
end

-- ---- fake Twenty ------------------------------------------------------------------------------

local CC = { "1", "7", "34", "44", "55", "351" }
local COUNTRY = { ["1"] = "US", ["7"] = "RU", ["34"] = "ES", ["44"] = "GB", ["55"] = "BR", ["351"] = "PT" }

-- Twenty's write-time normalisation: "+5511987654321" → national number, calling code, country.
local function normalize_phones(ph)
  if type(ph) ~= "table" then return ph end
  local n = ph.primaryPhoneNumber
  if type(n) == "string" and n:sub(1, 1) == "+" then
    local digits = n:sub(2)
    local best
    for _, c in ipairs(CC) do
      if digits:sub(1, #c) == c and (not best or #c > #best) then best = c end
    end
    if not best then return nil, "Provided phone number is invalid " .. n end
    return { primaryPhoneNumber = digits:sub(#best + 1), primaryPhoneCallingCode = "+" .. best,
             primaryPhoneCountryCode = COUNTRY[best], additionalPhones = cjson.null }
  end
  return { primaryPhoneNumber = n, primaryPhoneCallingCode = ph.primaryPhoneCallingCode or "",
           primaryPhoneCountryCode = ph.primaryPhoneCountryCode or "", additionalPhones = cjson.null }
end

-- Filter grammar of the reference §5 (the parts the modules use): and/or/not, field[cmp]:value.
local function parse_filter(s, i)
  local comb = s:match("^(%a+)%(", i)
  if comb == "and" or comb == "or" or comb == "not" then
    i = i + #comb + 1
    local kids = {}
    while true do
      local node
      node, i = parse_filter(s, i)
      kids[#kids + 1] = node
      local c = s:sub(i, i)
      i = i + 1
      if c == ")" then break end
      if c ~= "," then error("bad filter near " .. s:sub(i - 1)) end
    end
    return { op = comb, kids = kids }, i
  end
  local field, cmp, j = s:match("^([%w%.]+)%[(%a+)%]:()", i)
  if not field then error("bad filter near " .. s:sub(i)) end
  local q, v = s:sub(j, j), nil
  if q == '"' or q == "'" then
    local k = s:find(q, j + 1, true)
    v, i = s:sub(j + 1, k - 1), k + 1
  else
    local k = s:find("[,)]", j) or (#s + 1)
    v, i = s:sub(j, k - 1), k
  end
  return { field = field, cmp = cmp, value = v }, i
end

local function get(rec, path)
  local v = rec
  for part in path:gmatch("[^.]+") do
    if type(v) ~= "table" then return nil end
    v = v[part]
  end
  return v
end

local function matches(node, rec)
  if node.op == "and" then
    for _, k in ipairs(node.kids) do if not matches(k, rec) then return false end end
    return true
  elseif node.op == "or" then
    for _, k in ipairs(node.kids) do if matches(k, rec) then return true end end
    return false
  elseif node.op == "not" then
    return not matches(node.kids[1], rec)
  end
  local v = get(rec, node.field)
  if node.cmp == "eq" then return type(v) == "string" and v == node.value end
  error("comparator not supported by the fake: " .. node.cmp)
end

local SINGULAR = { people = "person", notes = "note", noteTargets = "noteTarget", tasks = "task",
                   taskTargets = "taskTarget" }

local function cap(s) return s:sub(1, 1):upper() .. s:sub(2) end

-- opts.link_field: "targetPersonId" (default, migrated workspaces) or "personId" (legacy).
function H.twenty(opts)
  opts = opts or {}
  local server = base({ db = { people = {}, notes = {}, noteTargets = {}, tasks = {}, taskTargets = {} },
                        link_field = opts.link_field or "targetPersonId", seq = 0 })
  local other = { targetPersonId = "personId", personId = "targetPersonId" }

  function server:new_id()
    self.seq = self.seq + 1
    return string.format("00000000-0000-4000-8000-%012d", self.seq)
  end

  -- Adds a record directly (a person someone created in the UI, a legacy row).
  function server:seed(plural, rec)
    rec.id = rec.id or self:new_id()
    self.db[plural][rec.id] = rec
    return rec
  end

  function server:all(plural)
    local l = {}
    for _, r in pairs(self.db[plural]) do l[#l + 1] = r end
    table.sort(l, function(a, b) return a.id < b.id end)
    return l
  end

  local function clean(plural, body)
    local rec = {}
    for k, v in pairs(body) do rec[k] = v end
    if plural == "people" and rec.phones ~= nil then
      local ph, e = normalize_phones(rec.phones)
      if not ph then return nil, err400(e) end
      rec.phones = ph
    end
    if plural == "noteTargets" or plural == "taskTargets" then
      local wrong = other[server.link_field]
      if rec[wrong] ~= nil then
        local obj = plural == "noteTargets" and "noteTarget" or "taskTarget"
        return nil, err400(string.format('Object %s doesn\'t have any "%s" field.', obj, wrong))
      end
      local pid = rec[server.link_field]
      if pid ~= nil and not server.db.people[pid] then
        return nil, err400('insert or update violates foreign key constraint "' .. server.link_field .. '"',
                           "QueryFailedError")
      end
    end
    return rec
  end

  function server:route(method, path, query, json)
    local plural, id = path:match("^/rest/(%w+)/?([%w%-]*)$")
    if not plural or not self.db[plural] then
      return err400(string.format("object '%s' not found. eg: companies", tostring(plural)))
    end
    local singular = SINGULAR[plural]
    if query.depth ~= "0" then return err400("the client must send depth=0") end
    if method == "GET" and id == "" then
      local list = self:all(plural)
      if query.filter then
        local ok, node = pcall(parse_filter, query.filter, 1)
        if not ok then return err400("Invalid filter: " .. tostring(node)) end
        local out = {}
        for _, r in ipairs(list) do if matches(node, r) then out[#out + 1] = r end end
        list = out
      end
      if not tonumber(query.limit) then return err400("the client must send limit") end
      local page = {}
      for i = 1, math.min(#list, tonumber(query.limit)) do page[i] = list[i] end
      return answer(200, { data = { [plural] = page },
                           totalCount = #list, pageInfo = { hasNextPage = #list > #page } })
    elseif method == "POST" and id == "" then
      local rec, e = clean(plural, json)
      if not rec then return e end
      local existing = rec.id and self.db[plural][rec.id]
      if existing and query.upsert ~= "true" then
        return err400('duplicate key value violates unique constraint "PK_' .. plural .. '"',
                      "QueryFailedError")
      end
      if existing then
        for k, v in pairs(rec) do existing[k] = v end
        rec = existing
      else
        rec.id = rec.id or self:new_id()
        self.db[plural][rec.id] = rec
      end
      return answer(201, { data = { ["create" .. cap(singular)] = rec } })
    elseif method == "PATCH" and id ~= "" then
      local existing = self.db[plural][id]
      if not existing then
        return err400('Could not find any entity of type "' .. singular .. '"', "EntityNotFoundError")
      end
      local rec, e = clean(plural, json)
      if not rec then return e end
      for k, v in pairs(rec) do existing[k] = v end
      return answer(200, { data = { ["update" .. cap(singular)] = existing } })
    end
    return answer(404, { statusCode = 404, error = "NotFoundException", messages = { "Cannot " .. method .. " " .. path } })
  end

  -- The note's markdown, its links, and people as the tests look at them.
  function server:note_markdown(id)
    local n = self.db.notes[id]
    return n and n.bodyV2 and n.bodyV2.markdown
  end

  function server:links(plural, key, value)
    local n = 0
    for _, r in pairs(self.db[plural]) do
      if value == nil or r[key] == value then n = n + 1 end
    end
    return n
  end

  return server
end

-- ---- fake generic REST CRM ---------------------------------------------------------------------

function H.rest()
  local server = base({ contacts = {}, activities = {}, scores = {}, keys = {} })
  function server:route(method, path, query, json)
    local key = self.log[#self.log].headers["Idempotency-Key"]
    if key and self.keys[key] then return answer(200, self.keys[key]) end
    local res
    if method == "POST" and path == "/rest/contacts" then
      self.contacts[json.phone] = json
      res = { id = json.phone }
    elseif method == "POST" and path == "/rest/activities" then
      self.activities[#self.activities + 1] = json
      res = { id = #self.activities }
    else
      local phone = path:match("^/rest/contacts/([^/]+)/score$")
      if method ~= "PATCH" or not phone then
        return answer(404, { error = "not found" })
      end
      self.scores[urldecode(phone)] = json.score
      res = { phone = urldecode(phone), score = json.score }
    end
    if key then self.keys[key] = res end
    return answer(201, res)
  end
  return server
end

return H
