-- Specs for scripts/crm/twenty.lua driven the way the deliverer runs it (a coroutine whose
-- http.request calls yield, progress saved before every request) against a fake Twenty: the
-- phone lookup in Twenty's stored form, create with ?upsert=true and the deterministic id,
-- updates, the person cache, notes linked with targetPersonId or personId, one coalesced note
-- per contact per day, lead score, tasks, merged batches, crash safety, and the classification
-- of Twenty's errors.
local H = require "spec.support.crm_fake_http"
local util = require "crm.util"

local ANA = "5511987654321"
local NS = util.uuid5(util.NS.url, "wahook:crm.twenty")
local ANA_ID = util.uuid5(NS, "acme:" .. ANA)
local T0 = 1767607320 -- 2026-01-05 10:02:00 UTC
local DAY = 86400

local twenty, server

local function fresh_module()
  package.loaded["crm.twenty"] = nil
  return require "crm.twenty"
end

local function run(op, fields, opts)
  opts = opts or {}
  opts.server = opts.server or server
  return H.run(twenty, op, fields, opts)
end

local function done(res)
  if res.status ~= "done" then
    error("run " .. res.status .. ": " .. (type(res.err) == "table" and tostring(res.err.message) or tostring(res.err)), 2)
  end
  return res
end

local function paths(srv, from)
  local l = {}
  for i = from or 1, #srv.log do l[#l + 1] = srv.log[i].method .. " " .. srv.log[i].path end
  return l
end

local function msg(text, at, kind, name)
  return { phone = ANA, kind = kind or "message_received", text = text, at = at or T0, name = name or "Ana Silva" }
end

local function note_id(day)
  return util.uuid5(NS, "note:acme:" .. ANA .. ":" .. day)
end

before_each(function()
  twenty = fresh_module()
  server = H.twenty()
end)

describe("people", function()
  it("looks a new contact up by its stored form, then creates it with upsert and the deterministic id", function()
    local res = done(run("contact_upsert", { phone = "+55 11 98765-4321", name = "Ana Silva" }))
    assert.same({ "GET /rest/people", "POST /rest/people" }, paths(server))
    local get = server.log[1]
    assert.equal("0", get.query.depth)
    assert.equal("5", get.query.limit)
    assert.equal('or(and(phones.primaryPhoneNumber[eq]:"11987654321",phones.primaryPhoneCallingCode[eq]:"+55"),'
                 .. 'phones.primaryPhoneNumber[eq]:"+5511987654321",phones.primaryPhoneNumber[eq]:"5511987654321")',
                 get.query.filter)
    -- The filter is URL-encoded: "+" travels as %2B, never as a space.
    assert.truthy(get.url:find("%2B55", 1, true))
    assert.falsy(get.url:find("+", 1, true))
    local post = server.log[2]
    assert.equal("true", post.query.upsert)
    assert.equal("0", post.query.depth)
    assert.same({ id = ANA_ID, name = { firstName = "Ana", lastName = "Silva" },
                  phones = { primaryPhoneNumber = "+" .. ANA } }, post.json)
    local people = server:all("people")
    assert.equal(1, #people)
    assert.equal(ANA_ID, people[1].id)
    assert.equal("11987654321", people[1].phones.primaryPhoneNumber)
    assert.equal("+55", people[1].phones.primaryPhoneCallingCode)
    assert.same({ ANA_ID }, res.result.people)
  end)

  it("caches the person id per contact: a warm contact_upsert with nothing new costs nothing", function()
    done(run("contact_upsert", { phone = ANA, name = "Ana Silva" }))
    local res = done(run("contact_upsert", { phone = ANA, name = "Ana Silva", last_message = "hi" }))
    assert.equal(0, res.requests)
    res = done(run("contact_upsert", { phone = ANA, lead_score = 55 }))
    assert.same({ "PATCH /rest/people/" .. ANA_ID }, paths(server, 3))
    assert.same({ leadScore = 55 }, server.log[3].json)
    assert.equal(55, server.db.people[ANA_ID].leadScore)
  end)

  it("finds a person someone else created and never overwrites its name", function()
    local p = server:seed("people", { name = { firstName = "Ana Maria", lastName = "Silva" },
                                      phones = { primaryPhoneNumber = "11987654321", primaryPhoneCallingCode = "+55" } })
    local res = done(run("contact_upsert", { phone = ANA, name = "ana", lead_score = 10 }))
    assert.same({ "GET /rest/people", "PATCH /rest/people/" .. p.id }, paths(server))
    assert.same({ leadScore = 10 }, server.log[2].json)
    assert.equal("Ana Maria", server.db.people[p.id].name.firstName)
    assert.same({ p.id }, res.result.people)
    assert.equal(1, #server:all("people"))
  end)

  it("fills the name of a found person that has none", function()
    local p = server:seed("people", { name = { firstName = "", lastName = "" },
                                      phones = { primaryPhoneNumber = "11987654321", primaryPhoneCallingCode = "+55" } })
    done(run("contact_upsert", { phone = ANA, name = "Ana Silva" }))
    assert.same({ name = { firstName = "Ana", lastName = "Silva" } }, server.log[2].json)
    assert.equal("Ana", server.db.people[p.id].name.firstName)
  end)

  it("matches a legacy row stored unnormalised and prefers the deterministic record", function()
    local legacy = server:seed("people", { phones = { primaryPhoneNumber = "+" .. ANA } })
    local res = done(run("lead_score", { phone = ANA, score = 3 }))
    assert.same({ legacy.id }, res.result.people)
    server = H.twenty()
    twenty = fresh_module()
    server:seed("people", { phones = { primaryPhoneNumber = ANA } })
    server:seed("people", { id = ANA_ID, phones = { primaryPhoneNumber = "11987654321", primaryPhoneCallingCode = "+55" } })
    res = done(run("lead_score", { phone = ANA, score = 3 }))
    assert.same({ ANA_ID }, res.result.people)
  end)

  it("a create retried after a crash updates the same person instead of adding one", function()
    -- The create reached Twenty but its answer was lost with the process.
    local res = run("contact_upsert", { phone = ANA, name = "Ana Silva" }, {
      crash_after = function(req) return req.method == "POST" end })
    assert.equal("crashed", res.status)
    assert.equal(1, #server:all("people"))
    twenty = fresh_module() -- a restart empties the module's cache
    local again = done(run("contact_upsert", { phone = ANA, name = "Ana Silva" }, { progress = res.progress }))
    -- The saved intent skips the lookup and repeats the idempotent upsert.
    assert.same({ "POST /rest/people" }, paths(server, 3))
    assert.equal(1, #server:all("people"))
    assert.same({ ANA_ID }, again.result.people)
  end)

  it("re-resolves a cached person that was deleted in the CRM", function()
    done(run("contact_upsert", { phone = ANA, name = "Ana Silva" }))
    server.db.people[ANA_ID] = nil
    done(run("lead_score", { phone = ANA, score = 80 }))
    assert.same({ "PATCH /rest/people/" .. ANA_ID, "GET /rest/people", "POST /rest/people" }, paths(server, 3))
    assert.equal(80, server.db.people[ANA_ID].leadScore)
  end)

  it("writes last_message fields only to configured custom fields", function()
    local cfg = { twenty = { last_message_field = "lastWhatsapp", last_message_at_field = "lastWhatsappAt",
                             lead_score_field = "score" } }
    done(run("contact_upsert", { phone = ANA, name = "Ana Silva", last_message = "Olá", last_message_at = T0,
                                 lead_score = 7 }, { config = cfg }))
    local post = server.log[2].json
    assert.equal("Olá", post.lastWhatsapp)
    assert.equal("2026-01-05T10:02:00Z", post.lastWhatsappAt)
    assert.equal(7, post.score)
    assert.is_nil(post.leadScore)
  end)
end)

describe("lead score", function()
  it("creates an unknown contact with its score in one upsert", function()
    done(run("lead_score", { phone = ANA, score = 40 }))
    assert.same({ "GET /rest/people", "POST /rest/people" }, paths(server))
    assert.equal(40, server.log[2].json.leadScore)
    assert.equal("+" .. ANA, server.log[2].json.name.firstName)
  end)

  it("is one PATCH for a known contact", function()
    done(run("contact_upsert", { phone = ANA, name = "Ana" }))
    local res = done(run("lead_score", { phone = ANA, score = 90.5 }))
    assert.equal(1, res.requests)
    assert.same({ leadScore = 90.5 }, server.log[3].json)
  end)

  it("refuses a score that is not a number without calling Twenty", function()
    local res = run("lead_score", { phone = ANA, score = "high" })
    assert.equal("failed", res.status)
    assert.is_true(res.err.permanent)
    assert.equal(0, res.requests)
  end)
end)

describe("notes", function()
  it("creates the day's note, then links it with targetPersonId", function()
    local res = done(run("activity", msg("Olá")))
    local id = note_id("2026-01-05")
    assert.same({ "GET /rest/people", "POST /rest/people", "GET /rest/notes", "POST /rest/notes",
                  "POST /rest/noteTargets" }, paths(server))
    assert.equal('id[eq]:"' .. id .. '"', server.log[3].query.filter)
    assert.same({ id = id, title = "WhatsApp 2026-01-05 (Ana Silva)",
                  bodyV2 = { markdown = "**10:02 Ana Silva:** Olá" } }, server.log[4].json)
    local link = server.log[5].json
    assert.equal(id, link.noteId)
    assert.equal(ANA_ID, link.targetPersonId)
    assert.is_nil(link.personId)
    assert.equal(util.uuid5(NS, "note-target:" .. id .. ":" .. ANA_ID), link.id)
    assert.equal("true", server.log[5].query.upsert)
    assert.equal(1, server:links("noteTargets", "noteId", id))
    assert.equal(5, res.requests)
  end)

  it("appends every later message of the day to the same note: read + PATCH, no new note", function()
    done(run("activity", msg("Olá", T0)))
    local res = done(run("activity", msg("Tudo ótimo!", T0 + 60, "message_sent")))
    local id = note_id("2026-01-05")
    assert.same({ "GET /rest/notes", "PATCH /rest/notes/" .. id }, paths(server, 6))
    assert.equal(2, res.requests)
    assert.equal("**10:02 Ana Silva:** Olá\n\n**10:03 Me:** Tudo ótimo!", server:note_markdown(id))
    assert.equal(1, #server:all("notes"))
    assert.equal(1, #server:all("noteTargets"))
  end)

  it("starts a new note on the next day", function()
    done(run("activity", msg("Olá", T0)))
    done(run("activity", msg("Bom dia", T0 + DAY)))
    assert.equal(2, #server:all("notes"))
    assert.equal(2, #server:all("noteTargets"))
    assert.equal("**10:02 Ana Silva:** Bom dia", server:note_markdown(note_id("2026-01-06")))
  end)

  it("uses the configured time zone for the day and the times", function()
    if not pcall(require, "wahook_pure") then
      pending("wahook_pure (the C module) is not on the cpath")
      return
    end
    -- 01:30 UTC on Jan 6 is still Jan 5 in São Paulo (UTC-3).
    done(run("activity", msg("tarde", T0 + 15.5 * 3600), { config = { twenty = { time_zone = "America/Sao_Paulo" } } }))
    assert.equal("**22:32 Ana Silva:** tarde", server:note_markdown(note_id("2026-01-05")))
  end)

  it("falls back to personId on a legacy workspace and remembers it", function()
    server = H.twenty { link_field = "personId" }
    done(run("activity", msg("Olá", T0)))
    assert.same({ "POST /rest/noteTargets", "POST /rest/noteTargets" }, paths(server, 5))
    assert.equal(ANA_ID, server.log[5].json.targetPersonId) -- answered 400 naming the field
    assert.equal(ANA_ID, server.log[6].json.personId)
    assert.is_nil(server.log[6].json.targetPersonId)
    assert.equal(1, #server:all("noteTargets"))
    -- The next link goes straight to personId.
    done(run("activity", msg("Olá de novo", T0 + DAY)))
    assert.equal(1, server:count("POST", "/rest/noteTargets") - 2)
    assert.equal(2, #server:all("noteTargets"))
  end)

  it("uses a configured link field without probing", function()
    server = H.twenty { link_field = "personId" }
    done(run("activity", msg("Olá"), { config = { twenty = { link_field = "personId" } } }))
    assert.equal(1, server:count("POST", "/rest/noteTargets"))
  end)

  it("a crash between the note and its noteTarget leaves exactly one linked note", function()
    local res = run("activity", msg("Olá"), {
      crash_before = function(req) return req.url:find("^/rest/noteTargets") ~= nil end })
    assert.equal("crashed", res.status)
    assert.equal(1, #server:all("notes"))
    assert.equal(0, #server:all("noteTargets"))
    twenty = fresh_module()
    done(run("activity", msg("Olá"), { progress = res.progress }))
    local id = note_id("2026-01-05")
    assert.equal(1, #server:all("notes"))
    assert.equal(1, server:links("noteTargets", "noteId", id))
    assert.equal("**10:02 Ana Silva:** Olá", server:note_markdown(id))
    -- Nothing was written twice: one note create, one link.
    assert.equal(1, server:count("POST", "/rest/notes"))
    assert.equal(1, server:count("POST", "/rest/noteTargets"))
  end)

  it("a crash after the note was created but before its answer still ends with one linked note", function()
    local res = run("activity", msg("Olá"), {
      crash_after = function(req) return req.method == "POST" and req.url:find("^/rest/notes") ~= nil end })
    assert.equal("crashed", res.status)
    done(run("activity", msg("Olá"), { progress = res.progress }))
    local id = note_id("2026-01-05")
    assert.equal("**10:02 Ana Silva:** Olá", server:note_markdown(id))
    assert.equal(1, #server:all("notes"))
    assert.equal(1, server:links("noteTargets", "noteId", id))
  end)

  it("an append retried after a lost answer does not add the line twice", function()
    done(run("activity", msg("Olá", T0)))
    local res = run("activity", msg("Tudo bem?", T0 + 60), {
      crash_after = function(req) return req.method == "PATCH" end })
    assert.equal("crashed", res.status)
    local again = done(run("activity", msg("Tudo bem?", T0 + 60), { progress = res.progress }))
    assert.equal(1, again.requests) -- the read shows the line is there
    assert.equal("**10:02 Ana Silva:** Olá\n\n**10:03 Ana Silva:** Tudo bem?", server:note_markdown(note_id("2026-01-05")))
  end)

  it("keeps other activities as notes of their own, linked, with their fields", function()
    done(run("activity", { phone = ANA, kind = "call_missed", text = "Missed call", at = T0,
                           fields = { duration = 0, video = false } }))
    local notes = server:all("notes")
    assert.equal(1, #notes)
    assert.equal("WhatsApp call_missed 2026-01-05 10:02", notes[1].title)
    assert.equal("Missed call\n\n- **duration:** 0\n\n- **video:** false", notes[1].bodyV2.markdown)
    assert.equal(1, server:links("noteTargets", "noteId", notes[1].id))
  end)
end)

describe("tasks", function()
  it("creates a TODO task with its due time and links it through taskTargets", function()
    done(run("contact_upsert", { phone = ANA, name = "Ana" }))
    local res = done(run("task", { phone = ANA, title = "Call back", body = "About the quote", due_at = T0 + 3600 }))
    assert.same({ "POST /rest/tasks", "POST /rest/taskTargets" }, paths(server, 3))
    local t = server.log[3].json
    assert.equal("Call back", t.title)
    assert.equal("TODO", t.status)
    assert.equal("2026-01-05T11:02:00Z", t.dueAt)
    assert.same({ markdown = "About the quote" }, t.bodyV2)
    assert.truthy(util.is_uuid(t.id))
    assert.same({ id = util.uuid5(NS, "task-target:" .. t.id .. ":" .. ANA_ID), taskId = t.id,
                  targetPersonId = ANA_ID }, server.log[4].json)
    assert.equal(2, res.requests)
  end)

  it("a crash between the task and its link leaves one linked task", function()
    done(run("contact_upsert", { phone = ANA, name = "Ana" }))
    local res = run("task", { phone = ANA, title = "Call back" }, {
      crash_before = function(req) return req.url:find("^/rest/taskTargets") ~= nil end })
    assert.equal("crashed", res.status)
    done(run("task", { phone = ANA, title = "Call back" }, { progress = res.progress }))
    assert.equal(1, #server:all("tasks"))
    assert.equal(1, #server:all("taskTargets"))
    assert.equal(1, server:count("POST", "/rest/tasks"))
  end)

  it("a task create retried after a lost answer reuses its saved id", function()
    done(run("contact_upsert", { phone = ANA, name = "Ana" }))
    local res = run("task", { phone = ANA, title = "Call back" }, {
      crash_after = function(req) return req.url:find("^/rest/tasks") ~= nil end })
    assert.equal("crashed", res.status)
    twenty = fresh_module()
    done(run("task", { phone = ANA, title = "Call back" }, { progress = res.progress }))
    -- Sent twice with the same id and ?upsert=true: still one task, linked once.
    assert.equal(2, server:count("POST", "/rest/tasks"))
    assert.equal(1, #server:all("tasks"))
    assert.equal(1, #server:all("taskTargets"))
  end)

  it("needs a title", function()
    local res = run("task", { phone = ANA })
    assert.equal("failed", res.status)
    assert.is_true(res.err.permanent)
  end)
end)

describe("batches (queued updates of one contact merged)", function()
  local items = {
    { op = "contact_upsert", fields = { phone = ANA, name = "Ana Silva" } },
    { op = "activity", fields = msg("Olá", T0) },
    { op = "activity", fields = msg("Tem horário amanhã?", T0 + 30) },
    { op = "lead_score", fields = { phone = ANA, score = 20 } },
    { op = "activity", fields = msg("Obrigada", T0 + 90) },
    { op = "lead_score", fields = { phone = ANA, score = 35 } },
  }

  it("turns six actions into one lookup, one create, and one note with every line", function()
    local res = done(run("batch", items))
    assert.same({ "GET /rest/people", "POST /rest/people", "GET /rest/notes", "POST /rest/notes",
                  "POST /rest/noteTargets" }, paths(server))
    assert.equal(35, server.log[2].json.leadScore) -- the last score wins
    assert.equal("**10:02 Ana Silva:** Olá\n\n**10:02 Ana Silva:** Tem horário amanhã?\n\n**10:03 Ana Silva:** Obrigada",
                 server:note_markdown(note_id("2026-01-05")))
    assert.equal(5, res.requests)
  end)

  it("costs two requests for any number of messages of a known contact's day", function()
    done(run("activity", msg("Olá", T0)))
    local burst = {}
    for i = 1, 20 do burst[i] = { op = "activity", fields = msg("m" .. i, T0 + 60 + i) } end
    local res = done(run("batch", burst))
    assert.equal(2, res.requests)
    local md = server:note_markdown(note_id("2026-01-05"))
    assert.truthy(md:find("m20", 1, true))
    local n = select(2, md:gsub("%*%*10:0", ""))
    assert.equal(21, n)
  end)

  it("a batch retried with more rows adds only what is new", function()
    local first = { items[1], items[2], items[3] }
    local res = run("batch", first, {
      crash_before = function(req) return req.url:find("^/rest/noteTargets") ~= nil end })
    assert.equal("crashed", res.status)
    local grown = { items[1], items[2], items[3], items[4], items[5] }
    done(run("batch", grown, { progress = res.progress }))
    local id = note_id("2026-01-05")
    assert.equal("**10:02 Ana Silva:** Olá\n\n**10:02 Ana Silva:** Tem horário amanhã?\n\n**10:03 Ana Silva:** Obrigada",
                 server:note_markdown(id))
    assert.equal(1, server:links("noteTargets", "noteId", id))
    assert.equal(20, server.db.people[ANA_ID].leadScore)
  end)

  it("skips an invalid item of a batch and delivers the others", function()
    local res = done(run("batch", { { op = "activity", fields = { kind = "message_received", text = "x" } },
                                    { op = "lead_score", fields = { phone = ANA, score = 5 } } }))
    assert.same({ 1 }, res.result.skipped)
    assert.equal(5, server.db.people[ANA_ID].leadScore)
  end)
end)

describe("errors", function()
  it("401 means the CRM target is misconfigured", function()
    server:fail("GET", "/rest/people", 401, { statusCode = 401, error = "UNAUTHENTICATED", messages = { "Token has expired." } })
    local res = run("lead_score", { phone = ANA, score = 1 })
    assert.equal("failed", res.status)
    assert.is_true(res.err.misconfigured)
    assert.truthy(res.err.message:find("Token has expired.", 1, true))
  end)

  it("429 is retried after Retry-After or retryAfterSeconds", function()
    server:fail("GET", "/rest/people", 429, { statusCode = 429, error = "RATE_LIMITED", retryAfterSeconds = 12 })
    local res = run("lead_score", { phone = ANA, score = 1 })
    assert.is_true(res.err.retry)
    assert.equal(12, res.err.retry_after)
    server:fail("GET", "/rest/people", 429, { statusCode = 429, messages = { "Limit reached (100 tokens per 60000 ms)" } },
                { ["retry-after"] = "30" })
    res = run("lead_score", { phone = ANA, score = 1 })
    assert.is_true(res.err.retry)
    assert.equal(30, res.err.retry_after)
    assert.truthy(res.err.message:find("Limit reached", 1, true))
  end)

  it("5xx and transport failures are retried", function()
    server:fail("GET", "/rest/people", 503)
    assert.is_true(run("lead_score", { phone = ANA, score = 1 }).err.retry)
    local res = run("lead_score", { phone = ANA, score = 1 }, { transport_error = function() return true end })
    assert.is_true(res.err.retry)
    assert.truthy(res.err.message:find("connection refused", 1, true))
  end)

  it("400 about the action is permanent", function()
    server:fail("POST", "/rest/people", 400, { statusCode = 400, error = "BadRequestException",
                                              messages = { "Provided phone number is invalid +5511987654321" } })
    local res = run("contact_upsert", { phone = ANA, name = "Ana" })
    assert.is_true(res.err.permanent)
    assert.truthy(res.err.message:find("phone number is invalid", 1, true))
  end)

  it("a phone that is not an international number is permanent, before any request", function()
    local res = run("contact_upsert", { phone = "abc" })
    assert.is_true(res.err.permanent)
    assert.equal(0, res.requests)
  end)

  it("a bad namespace in the config is a misconfiguration", function()
    local res = run("lead_score", { phone = ANA, score = 1 }, { config = { twenty = { namespace = "nope" } } })
    assert.is_true(res.err.misconfigured)
  end)
end)
