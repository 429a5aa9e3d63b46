-- CRM mapping for Twenty (twenty.com), the default wahook.crm.module. Speaks Twenty's REST API
-- (/rest/people, /rest/notes, /rest/noteTargets, /rest/tasks, /rest/taskTargets) as
-- ../shared/reference/twenty-crm.md describes it; the deliverer adds the base URL and
-- "Authorization: Bearer <wahook.crm.api-key>" to every request.
--
-- Operations (wahook.crm(op, fields) in a handler):
--   contact_upsert {phone, name?, last_message?, last_message_at?, lead_score?}
--   activity       {phone, kind, text?, name?, at?, fields?}  kind "message_received" /
--                  "message_sent" (any kind starting with "message") is a WhatsApp message
--   lead_score     {phone, score}
--   task           {phone, title, body?, due_at?}
-- phone is the contact's international number in any common form ("5511987654321",
-- "+55 11 98765-4321", a WhatsApp JID). at, last_message_at and due_at are epoch seconds (or
-- ms) or ISO-8601 strings.
--
-- People. A contact is one Twenty person, found by phone in the form Twenty stores (national
-- number + calling code, e.g. "11987654321" and "+55", URL-encoded filter; the unnormalised
-- "+5511987654321"/"5511987654321" of legacy rows match too) and otherwise created with
-- "+<E.164>" as primaryPhoneNumber, the push name as name, and leadScore when known. Twenty's
-- create does not deduplicate on phone, so the create uses a deterministic id —
-- UUIDv5(namespace, instance .. ":" .. phone) — with ?upsert=true: a create retried after a
-- crash or a timeout updates the same record instead of adding a second person, even when the
-- lookup cannot see it. The person id is cached at three levels: in ctx.progress for the run
-- (saved before the create is sent), in a module-level table for the VM's lifetime (so a warm
-- contact costs no lookup), and, across restarts and reloads, in Twenty itself: a cold cache
-- costs one lookup, which finds the deterministic record again. The name is written when the
-- person is created (or when the found person has none), never over a name someone set in the
-- CRM. last_message / last_message_at are written only to custom fields named in the config.
--
-- Notes. WhatsApp messages are coalesced into ONE note per contact per day (title "WhatsApp
-- 2026-01-05 (Ana Silva)", one "**10:02 Ana:** text" paragraph per message), whose id is
-- UUIDv5(namespace, "note:" .. instance .. ":" .. phone .. ":" .. day): the note is read and
-- its full bodyV2.markdown PATCHed with the new lines appended, or created (?upsert=true) and
-- linked to the person through a noteTarget with a deterministic id. The link field is
-- targetPersonId (Twenty ≥ 1.17, new workspaces) or personId (older workspaces): the first
-- link tries targetPersonId and falls back to personId on a 400 that names the field; the
-- answer is remembered for the VM's lifetime (or set it: config twenty.link_field). Other
-- activities become a note each; tasks are POST /rest/tasks + a taskTarget.
--
-- Crash safety. ctx.progress records the person id, which notes are written and linked, and
-- the ids of created tasks/notes before the request that creates them is sent (the deliverer
-- persists progress before every request). A retry skips what is done and re-reads what may
-- have been done: after a crash between a note and its noteTarget, the next attempt finds the
-- note (by its deterministic id), sees its lines are there, and only creates the link — exactly
-- one linked note. A retried append only adds the lines the note does not contain yet.
--
-- Rate. Twenty allows 100 requests/min per workspace (API keys only). Per action, with a warm
-- person cache: a message = 2 requests (read today's note, PATCH it); the first message of a
-- contact's day = 3 (read, create, link); lead_score = 1; contact_upsert = 0 when nothing
-- changed, else 1; a task = 2; a new contact adds 1 lookup + 1 create. That is a sustainable
-- ~50 logged messages/min per workspace one by one. Updates of one contact queued together are
-- merged when the deliverer hands them over as one batch (deliver_batch): any number of
-- messages of a contact's day still cost 2 requests (one read, one PATCH with every line),
-- contact_upsert/lead_score of the batch merge into at most one PATCH of the person. In a burst
-- the deliverer's crm rate limit holds rows back; they stay pending in the outbox (nothing is
-- lost), each contact's backlog is merged into fewer requests as it grows, and the queue
-- drains at Twenty's rate. A 429 is retried after Retry-After / retryAfterSeconds.
--
-- Config (wahook.scripts.config → wahook.config.twenty, all optional):
--   namespace        UUID for the deterministic ids (default: UUIDv5(URL, "wahook:crm.twenty"))
--   link_field       "targetPersonId" | "personId" (default: detected)
--   lead_score_field custom NUMBER field of person (default "leadScore")
--   last_message_field, last_message_at_field  custom TEXT / DATE_TIME fields (default: unset)
--   time_zone        for the daily note's date and times (default "UTC")
--   timeout          seconds per request (default 10)
local wahook = require "wahook"
local util = require "crm.util"

local M = {}

local DEFAULT_NS = util.uuid5(util.NS.url, "wahook:crm.twenty")

-- Shared by every run of this VM.
local link_field = {} -- note|task → the field Twenty accepted
local people, people_n = {}, 0 -- "<instance>:<phone>" → person id
local PEOPLE_MAX = 10000

local function conf()
  local c = wahook.config and wahook.config.twenty
  local o = {
    namespace = DEFAULT_NS, lead_score_field = "leadScore", time_zone = "UTC", timeout = 10,
  }
  if type(c) == "table" then
    for _, k in ipairs({ "namespace", "link_field", "lead_score_field", "last_message_field",
                         "last_message_at_field", "time_zone", "timeout" }) do
      if c[k] ~= nil then o[k] = c[k] end
    end
  end
  if not util.is_uuid(o.namespace) then
    error({ misconfigured = true, message = "twenty: config twenty.namespace must be a UUID" }, 0)
  end
  return o
end

local function cache_put(key, id)
  if people[key] == nil then
    people_n = people_n + 1
    if people_n > PEOPLE_MAX then people, people_n = {}, 1 end
  end
  people[key] = id
end

local function cache_drop(key)
  if people[key] ~= nil then
    people[key] = nil
    people_n = people_n - 1
  end
end

-- One request; a transfer failure raises a retry error, the answer is returned as it is.
local function call(st, method, url, body, what)
  return util.request(wahook.http, { method = method, url = url, body = body,
                                     timeout = st.opt.timeout }, "twenty: " .. what)
end

-- The record under data.<key> of an answer (create<Singular>, update<Singular>, …), accepting a
-- bare data object too.
local function record(resp, key)
  local d = type(resp.json) == "table" and resp.json.data
  if type(d) ~= "table" then return nil end
  if type(d[key]) == "table" then return d[key] end
  if type(d.id) == "string" then return d end
  return nil
end

local function list_of(resp, plural, what)
  local d = type(resp.json) == "table" and resp.json.data
  local l = type(d) == "table" and d[plural]
  if type(l) ~= "table" then
    error({ retry = true, message = "twenty: unexpected answer to " .. what .. ": " .. util.detail(resp) }, 0)
  end
  return l
end

local function is_not_found(resp)
  if resp.status == 404 then return true end
  if resp.status ~= 400 then return false end
  local d = util.detail(resp)
  return d:find("EntityNotFound", 1, true) ~= nil or d:find("not found", 1, true) ~= nil or
         d:find("Could not find", 1, true) ~= nil
end

local function is_duplicate(resp)
  if resp.status ~= 400 then return false end
  local d = util.detail(resp):lower()
  return d:find("duplicate", 1, true) ~= nil
end

local function split_name(name, fallback)
  name = util.str(name)
  if not name then return { firstName = fallback, lastName = "" } end
  name = name:gsub("^%s+", ""):gsub("%s+$", "")
  local first, last = name:match("^(%S+)%s+(.+)$")
  if not first then return { firstName = name, lastName = "" } end
  return { firstName = first, lastName = last }
end

local function name_empty(person)
  local n = type(person) == "table" and person.name
  if type(n) ~= "table" then return true end
  return not util.str(n.firstName) and not util.str(n.lastName)
end

-- ---- people ---------------------------------------------------------------------------------

local function lookup(st, g)
  local cc, nat = util.split_phone(g.phone)
  local filter = string.format(
    'or(and(phones.primaryPhoneNumber[eq]:"%s",phones.primaryPhoneCallingCode[eq]:"+%s"),' ..
    'phones.primaryPhoneNumber[eq]:"+%s",phones.primaryPhoneNumber[eq]:"%s")',
    nat, cc, g.phone, g.phone)
  local resp = call(st, "GET", "/rest/people?depth=0&limit=5&filter=" .. util.urlencode(filter),
                    nil, "find person by phone")
  if not util.ok(resp) then util.raise(resp, "twenty: find person by phone") end
  local found
  for _, p in ipairs(list_of(resp, "people", "find person by phone")) do
    if type(p) == "table" and util.str(p.id) then
      if p.id == g.det_id then return p end
      found = found or p
    end
  end
  return found
end

-- The body that creates the person of group g: everything the batch knows about it.
local function create_body(st, g)
  local b = {
    id = g.det_id,
    name = split_name(g.name, "+" .. g.phone),
    phones = { primaryPhoneNumber = "+" .. g.phone },
  }
  for k, v in pairs(g.update) do b[k] = v end
  return b
end

-- Resolves (finding or creating) the person of group g; sets gp.person_id. Returns true when
-- the person was created (with everything in create_body) during this attempt.
local function resolve(st, g)
  local gp = g.p
  if gp.person_id and not gp.person_create then return false end
  if not gp.person_create then
    local id = people[g.key]
    if id then
      gp.person_id = id
      g.from_cache = true
      return false
    end
    local p = lookup(st, g)
    if p then
      gp.person_id = p.id
      g.person = p
      cache_put(g.key, p.id)
      return false
    end
  end
  -- Create with the deterministic id, saved (with the intent) before the request is sent: a
  -- crash after it repeats the upsert, which cannot add a second person.
  gp.person_id, gp.person_create = g.det_id, true
  local resp = call(st, "POST", "/rest/people?upsert=true&depth=0", create_body(st, g), "create person")
  if not util.ok(resp) then util.raise(resp, "twenty: create person") end
  local rec = record(resp, "createPerson")
  gp.person_id = rec and util.str(rec.id) or g.det_id
  gp.person_create = nil
  gp.written = g.sig -- the create carried every field of the batch
  cache_put(g.key, gp.person_id)
  return true
end

-- Applies the merged contact_upsert / lead_score fields of group g to its person. gp.written
-- is a signature of the fields last written, so a retried batch repeats nothing it wrote.
local function update_person(st, g)
  local gp = g.p
  if gp.written == g.sig then return end
  local body, n = {}, 0
  for k, v in pairs(g.update) do body[k], n = v, n + 1 end
  if g.name and g.person and name_empty(g.person) then
    body.name, n = split_name(g.name, "+" .. g.phone), n + 1
  end
  if n > 0 then
    local resp = call(st, "PATCH", "/rest/people/" .. gp.person_id .. "?depth=0", body, "update person")
    if is_not_found(resp) and not g.retried then
      -- Deleted in the CRM since it was cached: find or create it again, once.
      cache_drop(g.key)
      gp.person_id, g.person, g.retried = nil, nil, true
      if resolve(st, g) then return end
      return update_person(st, g)
    end
    if not util.ok(resp) then util.raise(resp, "twenty: update person") end
  end
  gp.written = g.sig
end

-- ---- links, notes, tasks --------------------------------------------------------------------

-- Links note|task obj_id to the person through a noteTarget|taskTarget with a deterministic id
-- (?upsert=true: a repeated link is the same record).
local function link(st, g, kind, obj_id)
  local plural = kind .. "Targets"
  local person_id = g.p.person_id
  local id = util.uuid5(st.opt.namespace, kind .. "-target:" .. obj_id .. ":" .. person_id)
  local fields
  if st.opt.link_field then
    fields = { st.opt.link_field }
  elseif link_field[kind] then
    fields = { link_field[kind] }
  else
    fields = { "targetPersonId", "personId" }
  end
  for i, f in ipairs(fields) do
    local resp = call(st, "POST", "/rest/" .. plural .. "?upsert=true&depth=0",
                      { id = id, [kind .. "Id"] = obj_id, [f] = person_id }, "link " .. kind)
    if util.ok(resp) or is_duplicate(resp) then
      link_field[kind] = f
      return
    end
    local names_field = resp.status == 400 and (resp.body or ""):find(f, 1, true) ~= nil
    if not (names_field and i < #fields) then
      if resp.status == 400 and g.from_cache and not names_field then
        -- The cached person may be gone: look it up again on the next attempt.
        cache_drop(g.key)
        g.p.person_id = nil
        local e = util.http_error(resp, "twenty: link " .. kind)
        e.permanent, e.retry = nil, true
        error(e, 0)
      end
      util.raise(resp, "twenty: link " .. kind)
    end
  end
end

local function find_note(st, id)
  local filter = util.urlencode('id[eq]:"' .. id .. '"')
  local resp = call(st, "GET", "/rest/notes?depth=0&limit=1&filter=" .. filter, nil, "read note")
  if not util.ok(resp) then util.raise(resp, "twenty: read note") end
  local l = list_of(resp, "notes", "read note")
  return type(l[1]) == "table" and l[1] or nil
end

local function markdown_of(note)
  local b = type(note.bodyV2) == "table" and note.bodyV2
  return b and util.str(b.markdown) or ""
end

-- Writes the day's lines of group g into its note (created and linked when it does not exist).
-- np.n counts the lines already written: a batch retried with more rows only adds the new ones.
local function daily_note(st, g, day)
  local np = g.p.notes[day.key]
  if not np then
    np = {}
    g.p.notes[day.key] = np
  end
  local id = util.uuid5(st.opt.namespace, "note:" .. st.instance .. ":" .. g.phone .. ":" .. day.key)
  local done = math.tointeger(np.n) or 0
  if done < #day.lines then
    local todo = table.move(day.lines, done + 1, #day.lines, 1, {})
    local note = find_note(st, id)
    if note == nil then
      np.create, np.sent = true, true
      local resp = call(st, "POST", "/rest/notes?upsert=true&depth=0", {
        id = id, title = day.title, bodyV2 = { markdown = table.concat(todo, "\n\n") },
      }, "create note")
      if not util.ok(resp) then util.raise(resp, "twenty: create note") end
    else
      local body = markdown_of(note)
      local add = {}
      for _, l in ipairs(todo) do
        -- After an attempt that may have written, only lines the note lacks are added.
        if not (np.sent and body:find(l, 1, true)) then add[#add + 1] = l end
      end
      if #add > 0 then
        np.sent = true
        local md = table.concat(add, "\n\n")
        if body ~= "" then md = body .. "\n\n" .. md end
        local resp = call(st, "PATCH", "/rest/notes/" .. id .. "?depth=0",
                          { bodyV2 = { markdown = md } }, "append to note")
        if not util.ok(resp) then util.raise(resp, "twenty: append to note") end
      end
    end
    np.n, np.sent = #day.lines, nil
  end
  if np.create and not np.linked then
    link(st, g, "note", id)
    np.linked = true
  end
end

-- A note of its own (a non-message activity) or a task, with an id chosen before it is sent.
local function own_record(st, g, ip, kind, body)
  ip.id = ip.id or util.uuid4()
  if not ip.created then
    body.id = ip.id
    local plural = kind == "note" and "notes" or "tasks"
    local resp = call(st, "POST", "/rest/" .. plural .. "?upsert=true&depth=0", body, "create " .. kind)
    if not util.ok(resp) then util.raise(resp, "twenty: create " .. kind) end
    ip.created = true
  end
  if not ip.linked then
    link(st, g, kind, ip.id)
    ip.linked = true
  end
end

-- ---- items ----------------------------------------------------------------------------------

local function clock(st, v)
  local t = util.epoch(v) or math.floor(wahook.now())
  local tz = st.opt.time_zone
  local lt
  if tz == "UTC" or tz == nil then
    lt = os.date("!*t", t)
  else
    lt = wahook.localtime(tz, t)
  end
  return string.format("%04d-%02d-%02d", lt.year, lt.month, lt.day),
         string.format("%02d:%02d", lt.hour, lt.min)
end

local function text_of(f)
  local t = util.str(f.text)
  if t then return t end
  return "(" .. (util.str(f.kind) or "activity") .. ")"
end

local function is_message(kind)
  return kind:sub(1, 7) == "message"
end

-- Groups the items by contact phone and collects what each needs. Invalid items raise a
-- permanent error when alone; in a batch they are skipped (and logged) so the others go on.
local function plan(st, items)
  local groups, order = {}, {}
  st.skipped = {}
  for i, item in ipairs(items) do
    local ok, err = pcall(function()
      local op, f = item.op, item.fields
      if type(f) ~= "table" then util.bad_input("twenty: %s: fields must be a table", tostring(op)) end
      local phone = util.phone_digits(f.phone)
      if not phone then
        util.bad_input("twenty: %s: phone must be an international number, got %s", tostring(op),
                       tostring(f.phone))
      end
      local g = groups[phone]
      if not g then
        g = { phone = phone, key = st.instance .. ":" .. phone, update = {}, days = {}, day_order = {},
              own = {},
              det_id = util.uuid5(st.opt.namespace, st.instance .. ":" .. phone) }
        groups[phone] = g
        order[#order + 1] = g
      end
      g.name = util.str(f.name) or g.name
      if op == "contact_upsert" then
        local score = f.lead_score or f.score
        if score ~= nil then
          if type(score) ~= "number" then util.bad_input("twenty: contact_upsert: lead_score must be a number") end
          g.update[st.opt.lead_score_field] = score
        end
        if st.opt.last_message_field and util.str(f.last_message) then
          g.update[st.opt.last_message_field] = f.last_message
        end
        if st.opt.last_message_at_field and util.iso8601(f.last_message_at) then
          g.update[st.opt.last_message_at_field] = util.iso8601(f.last_message_at)
        end
      elseif op == "lead_score" then
        if type(f.score) ~= "number" then
          util.bad_input("twenty: lead_score: score must be a number, got %s", tostring(f.score))
        end
        g.update[st.opt.lead_score_field] = f.score
      elseif op == "activity" then
        local kind = util.str(f.kind)
        if not kind then util.bad_input("twenty: activity: kind is required") end
        local dkey, hm = clock(st, f.at or f.timestamp)
        if is_message(kind) then
          local day = g.days[dkey]
          if not day then
            day = { key = dkey, lines = {} }
            g.days[dkey] = day
            g.day_order[#g.day_order + 1] = day
          end
          local who = kind:find("sent", 1, true) and "Me" or (util.str(f.name) or ("+" .. phone))
          day.lines[#day.lines + 1] = string.format("**%s %s:** %s", hm, who, text_of(f))
        else
          local md = { text_of(f) }
          if type(f.fields) == "table" then
            local keys = {}
            for k in pairs(f.fields) do if type(k) == "string" then keys[#keys + 1] = k end end
            table.sort(keys)
            for _, k in ipairs(keys) do
              local v = f.fields[k]
              if type(v) == "string" or type(v) == "number" or type(v) == "boolean" then
                md[#md + 1] = string.format("- **%s:** %s", k, tostring(v))
              end
            end
          end
          g.own[#g.own + 1] = { i = i, kind = "note", body = {
            title = string.format("WhatsApp %s %s %s", kind, dkey, hm),
            bodyV2 = { markdown = table.concat(md, "\n\n") } } }
        end
      elseif op == "task" then
        local title = util.str(f.title)
        if not title then util.bad_input("twenty: task: title is required") end
        local body = { title = title, status = "TODO" }
        if util.str(f.body) then body.bodyV2 = { markdown = f.body } end
        if f.due_at ~= nil then
          body.dueAt = util.iso8601(f.due_at)
          if not body.dueAt then util.bad_input("twenty: task: due_at must be epoch seconds or ISO-8601") end
        end
        g.own[#g.own + 1] = { i = i, kind = "task", body = body }
      else
        util.bad_input("twenty: unknown operation %s", tostring(op))
      end
    end)
    if not ok then
      if #items == 1 then error(err, 0) end
      local msg = type(err) == "table" and err.message or tostring(err)
      wahook.log.warn("twenty: item skipped", { item = i, error = msg })
      st.skipped[#st.skipped + 1] = i
    end
  end
  for _, g in ipairs(order) do
    local keys = {}
    for k in pairs(g.update) do keys[#keys + 1] = k end
    table.sort(keys)
    for i, k in ipairs(keys) do keys[i] = k .. "=" .. tostring(g.update[k]) end
    g.sig = table.concat(keys, "&")
    for _, day in ipairs(g.day_order) do
      day.title = string.format("WhatsApp %s (%s)", day.key, g.name or ("+" .. g.phone))
    end
  end
  return order
end

-- deliver_batch(items, ctx): items = {{op = …, fields = {…}}, …} of one contact, oldest first
-- (see crm_runner.h). Also the engine behind deliver.
function M.deliver_batch(items, ctx)
  local st = { opt = conf(), instance = ctx.instance or "" }
  if type(ctx.progress) ~= "table" then ctx.progress = {} end
  local p = ctx.progress
  p.contacts = type(p.contacts) == "table" and p.contacts or {}
  local groups = plan(st, items)
  local out = { people = {} }
  for _, g in ipairs(groups) do
    g.p = type(p.contacts[g.phone]) == "table" and p.contacts[g.phone] or {}
    p.contacts[g.phone] = g.p
    g.p.notes = type(g.p.notes) == "table" and g.p.notes or {}
    g.p.items = type(g.p.items) == "table" and g.p.items or {}
    if not resolve(st, g) then update_person(st, g) end
    for _, day in ipairs(g.day_order) do daily_note(st, g, day) end
    for _, o in ipairs(g.own) do
      local k = tostring(o.i)
      g.p.items[k] = type(g.p.items[k]) == "table" and g.p.items[k] or {}
      own_record(st, g, g.p.items[k], o.kind, o.body)
    end
    out.people[#out.people + 1] = g.p.person_id
  end
  if #st.skipped > 0 then out.skipped = st.skipped end
  return out
end

function M.deliver(op, fields, ctx)
  return M.deliver_batch({ { op = op, fields = fields } }, ctx)
end

return M
