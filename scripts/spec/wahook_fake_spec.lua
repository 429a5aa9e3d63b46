-- Specs for the fake wahook module (spec/support/wahook_fake.lua): the argument rules and
-- messages of runtime/lua_api*.c (the cases of tests/unit/test_lua_api.c), the phases, the
-- outcome it records and the pure functions it delegates to wahook_pure. Its names are checked
-- against the C registration by tests/unit/test_api_names.c.
local fake = require("spec.support.wahook_fake")._install()
local wahook = require "wahook"
local cjson = require "cjson"

-- Runs f and returns its error message (failing when f does not raise).
local function err(f)
  local ok, e = pcall(f)
  assert(not ok, "expected an error")
  return tostring(e)
end

-- The error raised at the calling line, like luaL_error from a C function.
local function raises_at_caller(f, text)
  local e = err(f)
  assert.matches("wahook_fake_spec%.lua:%d+: ", e)
  assert.truthy(e:find(text, 1, true), ("%q does not contain %q"):format(e, text))
end

local function last_action()
  local a = fake._outcome().actions
  return a[#a]
end

describe("wahook fake", function()
  before_each(function() fake._reset{ now = 1761141987 } end)

  it("is what require 'wahook' returns", function()
    assert.equals(fake, wahook)
    assert.is_string(wahook.version)
  end)

  describe("send_text", function()
    it("normalises the recipient and queues the action", function()
      wahook.send_text("+34 600 111 222", "Hola")
      assert.same({ type = "send_text", to = "34600111222", text = "Hola" }, last_action())
      wahook.send_text("120363025246125888@g.us", "grupo", { delay = 1200, quoted = "3EB0ABC", link_preview = false })
      assert.same({ type = "send_text", to = "120363025246125888@g.us", text = "grupo", delay = 1200,
                    quoted = "3EB0ABC", link_preview = false }, last_action())
      wahook.send_text(34600111222, "n")
      assert.equals("34600111222", last_action().to)
      wahook.send_text("207581245931618@lid", "lid")
      assert.equals("207581245931618@lid", last_action().to)
      assert.equals(4, #fake._outcome().actions)
    end)

    it("refuses what the C module refuses, with its messages", function()
      raises_at_caller(function() wahook.send_text("abc", "x") end,
        "wahook.send_text: 'to' must be a phone number (digits, optionally with + and spaces) or a WhatsApp JID such as 34600111222@s.whatsapp.net, got \"abc\"")
      raises_at_caller(function() wahook.send_text("12", "x") end, "'to' must be a phone number")
      raises_at_caller(function() wahook.send_text(nil, "x") end, "got nil")
      raises_at_caller(function() wahook.send_text("a b@s.whatsapp.net", "x") end, "'to' must be")
      raises_at_caller(function() wahook.send_text(string.rep("1", 21), "x") end, "'to' must be")
      raises_at_caller(function() wahook.send_text("34600111222", "") end,
        "wahook.send_text: text must be a non-empty string of at most 4096 bytes, got \"\"")
      raises_at_caller(function() wahook.send_text("34600111222", string.rep("x", 4097)) end, "got 4097 bytes")
      wahook.send_text("34600111222", string.rep("x", 4096))
      raises_at_caller(function() wahook.send_text("34600111222", {}) end, "got a table")
      raises_at_caller(function() wahook.send_text("34600111222", "\xff") end, "text is not valid UTF-8")
      raises_at_caller(function() wahook.send_text("34600111222", "x", { dealy = 5 }) end,
        "wahook.send_text options: unknown field \"dealy\" (allowed: delay, quoted, link_preview)")
      raises_at_caller(function() wahook.send_text("34600111222", "x", { delay = -1 }) end,
        "delay must be an integer number of milliseconds 0..300000, got -1")
      raises_at_caller(function() wahook.send_text("34600111222", "x", { delay = 1.5 }) end, "got 1.5")
      raises_at_caller(function() wahook.send_text("34600111222", "x", { link_preview = "yes" }) end,
        "link_preview must be true or false, got \"yes\"")
      raises_at_caller(function() wahook.send_text("34600111222", "x", 5) end, "options must be a table, got 5")
      -- Failed calls queued nothing.
      assert.equals(1, #fake._outcome().actions)
    end)

    it("caps the actions of one run", function()
      raises_at_caller(function()
        for _ = 1, 200 do wahook.send_text("34600111222", "x") end
      end, "wahook.send_text: too many actions: a handler may queue at most 100 per event")
      assert.equals(100, #fake._outcome().actions)
    end)
  end)

  describe("crm, alert, mail", function()
    it("queue copies of their fields", function()
      local fields = { phone = "34600111222", score = 10, tags = { "a" } }
      wahook.crm("contact_upsert", fields)
      fields.score = 99
      assert.same({ type = "crm", op = "contact_upsert", fields = { phone = "34600111222", score = 10, tags = { "a" } } },
                  last_action())
      assert.equals("integer", math.type(last_action().fields.score))
      wahook.alert("connection.lost", "Instance down", { instance = "main" })
      assert.same({ type = "alert", kind = "connection.lost", text = "Instance down", fields = { instance = "main" } },
                  last_action())
      wahook.alert("qr", "scan me")
      assert.is_nil(last_action().fields)
    end)

    it("refuse bad operations and fields", function()
      raises_at_caller(function() wahook.crm("delete_everything", {}) end,
        "wahook.crm: unknown operation \"delete_everything\" (allowed: contact_upsert, activity, lead_score, task)")
      raises_at_caller(function() wahook.crm("task") end, "wahook.crm: fields must be a table, got nil")
      raises_at_caller(function() wahook.crm("task", { 1, 2 }) end, "fields must be a table with string keys, not a list")
      raises_at_caller(function() wahook.crm("task", { f = print }) end, "wahook.crm: cannot serialise a function value at fields.f")
      raises_at_caller(function() wahook.crm("task", { a = { b = { 1, x = 2 } } }) end,
        "cannot serialise a table with mixed keys at fields.a.b")
      raises_at_caller(function() wahook.crm("task", { a = { [1] = 1, [3] = 3 } }) end,
        "integer keys must be exactly 1..n, without holes")
      raises_at_caller(function() wahook.crm("task", { n = 0 / 0 }) end, "a number that is NaN or infinite at fields.n")
      raises_at_caller(function() wahook.crm("task", { ["a b"] = "\xff" }) end, "not valid UTF-8 at fields[\"a b\"]")
      raises_at_caller(function() wahook.alert("bad kind", "x") end,
        "wahook.alert: kind must use letters, digits, '_', '.' and '-' only, got \"bad kind\"")
      raises_at_caller(function() wahook.alert("k", "x", "notatable") end, "fields must be a table or nil, got \"notatable\"")
    end)

    it("mail: recipients, attachments from data or a data URL", function()
      wahook.mail({ "ops@example.com", "b@example.org" }, "New lead", "Body",
                  { { filename = "a.txt", content_type = "text/plain", data = "hi!" } })
      assert.same({ type = "mail", to = { "ops@example.com", "b@example.org" }, subject = "New lead", body = "Body",
                    attachments = { { filename = "a.txt", content_type = "text/plain", data_base64 = "aGkh" } } },
                  last_action())
      wahook.mail("ops@example.com", "QR", "", { { filename = "qr.png", data_url = "data:image/png;base64,iVBORw0KGgo=" } })
      assert.same({ filename = "qr.png", content_type = "image/png", data_base64 = "iVBORw0KGgo=" },
                  last_action().attachments[1])
      raises_at_caller(function() wahook.mail("ops@example.com", "Hi\r\nBcc: x@y.z", "b") end, "subject must be a single line")
      raises_at_caller(function() wahook.mail("not an address", "S", "b") end, "\"not an address\" is not an e-mail address")
      raises_at_caller(function() wahook.mail({}, "S", "b") end, "'to' must list 1..20 addresses")
      raises_at_caller(function() wahook.mail("a@b.c", "S", "b", { { filename = "x", data = "d", data_url = "data:;base64,AA==" } }) end,
        "wahook.mail attachment 1 needs exactly one of data")
      raises_at_caller(function() wahook.mail("a@b.c", "S", "b", { { filename = "x", data_url = "data:image/png;base64,@@@" } }) end,
        "does not carry valid base64")
      raises_at_caller(function() wahook.mail("a@b.c", "S", "b", { { filename = "x", data_url = "http://x/y.png" } }) end,
        "data_url must look like")
      raises_at_caller(function() wahook.mail("a@b.c", "S", "b", { { filename = "../etc/passwd", data = "x" } }) end,
        "filename must not contain")
      raises_at_caller(function() wahook.mail("a@b.c", "S", "b", { { filename = "x", data = "x", size = 1 } }) end,
        "unknown field \"size\"")
      raises_at_caller(function() wahook.mail("a@b.c", "S", "b", { { filename = "x", data = "x", content_type = "pdf" } }) end,
        "content_type must be a media type")
    end)
  end)

  describe("timers", function()
    it("set, replace and cancel like the outcome does", function()
      wahook.after(60, "remind", { step = 2 })
      assert.same({ { name = "remind", due_at = 1761142047000, payload = { step = 2 } } }, fake._outcome().timers)
      wahook.after(1.5, "remind")
      assert.same({ { name = "remind", due_at = 1761141988500 } }, fake._outcome().timers)
      wahook.cancel("remind")
      assert.same({}, fake._outcome().timers)
      assert.same({ "remind" }, fake._outcome().cancelled)
      wahook.after(5, "remind") -- undoes the cancel
      assert.same({}, fake._outcome().cancelled)
      wahook.after(30 * 86400, "max")
    end)

    it("refuse bad arguments", function()
      raises_at_caller(function() wahook.after(0, "x") end,
        "wahook.after: seconds must be a number > 0 and at most 2592000 (30 days), got 0")
      raises_at_caller(function() wahook.after(30 * 86400 + 1, "x") end, "at most 2592000")
      raises_at_caller(function() wahook.after(0 / 0, "x") end, "seconds must be")
      raises_at_caller(function() wahook.after("10", "x") end, "got \"10\"")
      raises_at_caller(function() wahook.after(10, string.rep("n", 65)) end,
        "the timer name must be a non-empty string of at most 64 bytes")
      raises_at_caller(function() wahook.after(10, "") end, "the timer name must be")
      raises_at_caller(function() wahook.after(10, "a\nb") end, "must not contain control characters")
      raises_at_caller(function() wahook.after(10, "x", "payload") end, "payload must be a table or nil")
      raises_at_caller(function() wahook.after(10, "x", { 1, 2 }) end, "not a list")
      raises_at_caller(function() wahook.cancel() end, "the timer name must be")
      raises_at_caller(function()
        for i = 1, 60 do wahook.after(10, "t" .. i) end
      end, "too many timers: a handler may set or cancel at most 50 per event")
    end)
  end)

  describe("state", function()
    it("starts empty, returns copies, and is replaced by set", function()
      assert.same({}, wahook.state.get())
      fake._reset{ state = { step = 1, tags = {} } }
      local s = wahook.state.get()
      s.step = 99
      assert.equals(1, wahook.state.get().step)
      assert.equals("unchanged", fake._outcome().state.change)
      s.step = 2
      wahook.state.set(s)
      assert.same({ change = "set", value = { step = 2, tags = {} } }, fake._outcome().state)
      assert.equals(2, wahook.state.get().step)
      wahook.state.set(nil)
      assert.same({}, wahook.state.get())
      assert.equals("cleared", fake._outcome().state.change)
    end)

    it("refuses what cannot be stored", function()
      raises_at_caller(function() wahook.state.set({ a = { b = { 1, x = 2 } } }) end,
        "wahook.state.set: cannot serialise a table with mixed keys at state.a.b")
      raises_at_caller(function() wahook.state.set({ blob = string.rep("x", 70000) }) end,
        "wahook.state.set: state is too large: more than 65536 bytes as JSON")
      raises_at_caller(function() wahook.state.set({ 1, 2 }) end, "not a list")
      raises_at_caller(function() wahook.state.set("x") end, "state must be a table (or nil to clear it), got \"x\"")
      raises_at_caller(function() local t = {} t.self = t wahook.state.set(t) end, "a table that contains itself (a cycle)")
      raises_at_caller(function() wahook.state.set({ [true] = 1 }) end, "a table with a boolean key at state")
      assert.equals("unchanged", fake._outcome().state.change)
    end)
  end)

  describe("record", function()
    it("keeps the fixed kinds and fields", function()
      wahook.record("bot_reply", { in_reply_to = "3EB0", latency_ms = 120.0 })
      wahook.record("handoff", {})
      wahook.record("lead", { score = 40, stage = "engaged" })
      wahook.record("csat", { score = 5 })
      wahook.record("custom", { name = "x", value = true })
      local f = fake._outcome().facts
      assert.same({ kind = "bot_reply", fields = { in_reply_to = "3EB0", latency_ms = 120 } }, f[1])
      assert.equals("integer", math.type(f[1].fields.latency_ms))
      assert.same({ kind = "handoff", fields = {} }, f[2])
      assert.equals(5, #f)
    end)

    it("refuses other kinds and fields", function()
      raises_at_caller(function() wahook.record("purchase", {}) end,
        "wahook.record: unknown kind \"purchase\" (allowed: bot_reply, handoff, lead, csat, custom)")
      raises_at_caller(function() wahook.record("bot_reply", { in_reply_to = "x", latency = 5 }) end,
        "wahook.record('bot_reply'): unknown field 'latency' for kind 'bot_reply' (allowed: in_reply_to, latency_ms)")
      raises_at_caller(function() wahook.record("bot_reply", { in_reply_to = "x", latency_ms = -3 }) end,
        "latency_ms must be an integer >= 0")
      raises_at_caller(function() wahook.record("bot_reply", { in_reply_to = "x", latency_ms = 1.5 }) end,
        "latency_ms must be an integer >= 0")
      raises_at_caller(function() wahook.record("bot_reply", { latency_ms = 3 }) end, "kind 'bot_reply' needs the field in_reply_to")
      raises_at_caller(function() wahook.record("lead", {}) end, "kind 'lead' needs at least one of: score, stage")
      raises_at_caller(function() wahook.record("csat", { score = "5" }) end, "score must be a number")
      raises_at_caller(function() wahook.record("custom", { name = "x", value = { 1 } }) end,
        "value must be a string, a number or a boolean")
      raises_at_caller(function() wahook.record("custom", { name = "x" }) end, "needs the field value")
      raises_at_caller(function() wahook.record("handoff", "reason") end, "fields must be a table")
      raises_at_caller(function() wahook.record("handoff", { reason = "" }) end,
        "reason must be a non-empty string of at most 512 bytes")
    end)
  end)

  describe("log and metric", function()
    it("log lines keep level, message and fields", function()
      wahook.log.info("hello", { a = 1 })
      wahook.log.warn(42)
      wahook.log.error("x", {})
      assert.same({ { level = "info", msg = "hello", fields = { a = 1 } }, { level = "warn", msg = "42", fields = {} },
                    { level = "error", msg = "x", fields = {} } }, fake._logs())
      raises_at_caller(function() wahook.log.info({}) end, "wahook.log.info: the message must be a string, got a table")
      raises_at_caller(function() wahook.log.warn("x", 5) end, "wahook.log.warn: fields must be a table or nil, got 5")
    end)

    it("metrics add up per name and labels, labels become strings", function()
      wahook.metric.inc("msgs", { type = "text" })
      wahook.metric.inc("msgs", { type = "text" })
      wahook.metric.inc("msgs", { type = "image", n = 2, ok = true })
      wahook.metric.inc("other")
      assert.same({ { name = "msgs", labels = { type = "text" }, value = 2 },
                    { name = "msgs", labels = { type = "image", n = "2", ok = "true" }, value = 1 },
                    { name = "other", labels = {}, value = 1 } }, fake._outcome().metrics)
      raises_at_caller(function() wahook.metric.inc("bad name") end,
        "wahook.metric.inc: the metric name must be letters, digits and _ (at most 64), got \"bad name\"")
      raises_at_caller(function() wahook.metric.inc("m", { ["bad-label"] = 1 }) end, "label name 'bad-label' must be letters")
      raises_at_caller(function() wahook.metric.inc("m", { x = {} }) end, "label x must be a string, a number or a boolean")
    end)
  end)

  describe("phases", function()
    it("handler-only functions raise while scripts load and in the deliverer", function()
      fake._reset{ phase = "load" }
      raises_at_caller(function() wahook.send_text("34600111222", "x") end,
        "wahook.send_text cannot be called while scripts load (allowed in: event handler)")
      raises_at_caller(function() wahook.state.get() end, "wahook.state.get cannot be called while scripts load")
      raises_at_caller(function() wahook.metric.inc("m") end, "(allowed in: event handler, deliverer)")
      wahook.log.info("fine at load")
      assert.is_table(wahook.localtime("UTC", 0))
      fake._reset{ phase = "deliver" }
      raises_at_caller(function() wahook.after(1, "x") end,
        "wahook.after cannot be called from the deliverer (allowed in: event handler)")
      wahook.metric.inc("m")
    end)

    it("http.request only in the deliverer", function()
      raises_at_caller(function() wahook.http.request{ url = "/x" } end,
        "wahook.http.request cannot be called from an event handler (allowed in: deliverer)")
      fake._reset{ phase = "deliver" }
      local res, e = wahook.http.request{ url = "/rest/people" }
      assert.is_nil(res)
      assert.equals("http is not available", e)
      fake._reset{ phase = "deliver", http = function(req)
        return { status = 201, headers = {}, body = "", json = { got = req.method .. " " .. req.url } }
      end }
      local r = wahook.http.request{ method = "post", url = "/rest/people", body = { name = "Ana" }, timeout = 5 }
      assert.same({ got = "POST /rest/people" }, r.json)
      local sent = fake._requests()[1]
      assert.equals("application/json", sent.headers["Content-Type"])
      assert.equals(5000, sent.timeout_ms)
      raises_at_caller(function() wahook.http.request{ url = "https://evil.example/x" } end, "url must be a path under the target's base URL")
      raises_at_caller(function() wahook.http.request{ url = "/a/../b" } end, "url must be a path")
      raises_at_caller(function() wahook.http.request{ url = "/x", method = "TRACE" } end,
        "method must be GET, POST, PUT, PATCH or DELETE, got \"TRACE\"")
      raises_at_caller(function() wahook.http.request{ url = "/x", timeout = 31 } end, "timeout must be seconds > 0 and at most 30")
      raises_at_caller(function() wahook.http.request{ url = "/x", headers = { ["bad header"] = "v" } } end, "is not a valid HTTP token")
      raises_at_caller(function() wahook.http.request{ url = "/x", headers = { h = "a\r\nb" } } end, "must be one line")
      raises_at_caller(function() wahook.http.request{ url = "/x", verb = "GET" } end,
        "wahook.http.request: unknown field \"verb\" (allowed: method, url, headers, body, timeout)")
    end)
  end)

  describe("time and config", function()
    it("now is the run's clock, in seconds with milliseconds", function()
      fake._reset{ now = 1761141987.25 }
      assert.equals("float", math.type(wahook.now()))
      assert.equals(1761141987.25, wahook.now())
      fake._set_now(1761141990)
      assert.equals(1761141990.0, wahook.now())
    end)

    it("localtime and mktime run the real time-zone code", function()
      local t = wahook.localtime("Europe/Madrid", 1774746000) -- the 2026 spring change
      assert.same({ 2026, 3, 29, 3, 0, true, "CEST" }, { t.year, t.month, t.day, t.hour, t.min, t.isdst, t.zone })
      assert.equals(1774746000, wahook.mktime("Europe/Madrid", t))
      assert.equals(1761141987, wahook.mktime("UTC", { year = 2025, month = 10, day = 22, hour = 14, min = 6, sec = 27 }))
      -- No t: the run's clock, not the machine's.
      assert.equals(2025, wahook.localtime("UTC").year)
      assert.equals(wahook.localtime("UTC", 1761141987).sec, wahook.localtime("UTC", 1761141987.9).sec)
      raises_at_caller(function() wahook.localtime("Mars/Olympus") end, "wahook.localtime: unknown time zone \"Mars/Olympus\"")
      raises_at_caller(function() wahook.localtime("../../etc/passwd") end, "invalid time zone")
      raises_at_caller(function() wahook.localtime(1) end, "the time zone (e.g. \"Europe/Madrid\") must be a non-empty string")
      raises_at_caller(function() wahook.localtime("UTC", "noon") end, "t must be seconds since the epoch, got \"noon\"")
      raises_at_caller(function() wahook.mktime("UTC", { year = 2025, month = 1 }) end, "wahook.mktime: day must be an integer, got nil")
      raises_at_caller(function() wahook.mktime("UTC", { year = 2025, month = 1, day = 1, hours = 3 }) end,
        "wahook.mktime fields: unknown field \"hours\"")
    end)

    it("config is read-only at every depth, with pairs, ipairs and #", function()
      fake._reset{ config = { tz = "Europe/Madrid", list = { "a", "b" }, nested = { n = 1 } } }
      assert.equals("Europe/Madrid", wahook.config.tz)
      assert.equals(2, #wahook.config.list)
      local seen = {}
      for i, v in ipairs(wahook.config.list) do seen[i] = v end
      assert.same({ "a", "b" }, seen)
      local keys = {}
      for k in pairs(wahook.config) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.same({ "list", "nested", "tz" }, keys)
      raises_at_caller(function() wahook.config.tz = "UTC" end, "wahook.config is read-only")
      raises_at_caller(function() wahook.config.nested.n = 2 end, "wahook.config is read-only")
      assert.equals("read-only", getmetatable(wahook.config))
      -- Like the C proxies, it can be passed back to the host and serialises as what it wraps.
      wahook.crm("activity", { copy = wahook.config.nested })
      assert.same({ n = 1 }, last_action().fields.copy)
    end)

    it("keeps JSON null and empty arrays through copies", function()
      fake._reset{ state = { gone = cjson.null, list = setmetatable({}, { __name = "x" }) } }
      assert.equals(cjson.null, wahook.state.get().gone)
    end)
  end)
end)
