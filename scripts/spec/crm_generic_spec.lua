-- Specs for scripts/crm/generic_rest.lua: the endpoints of the original description, bodies,
-- the phone in the score path, the Idempotency-Key kept across a retry, and the classification
-- of the CRM's answers.
local H = require "spec.support.crm_fake_http"

local generic, server

before_each(function()
  package.loaded["crm.generic_rest"] = nil
  generic = require "crm.generic_rest"
  server = H.rest()
end)

local function run(op, fields, opts)
  opts = opts or {}
  opts.server = server
  return H.run(generic, op, fields, opts)
end

describe("generic REST CRM", function()
  it("contact_upsert is POST /rest/contacts", function()
    local res = run("contact_upsert", { phone = "+34 600 111 222", name = "Maria", last_message = "hola",
                                        last_message_at = 1767607320 })
    assert.equal("done", res.status)
    assert.equal(1, res.requests)
    local r = server.log[1]
    assert.equal("POST", r.method)
    assert.equal("/rest/contacts", r.path)
    assert.same({ phone = "34600111222", name = "Maria", last_message = "hola",
                  last_message_at = "2026-01-05T10:02:00Z" }, r.json)
    assert.equal("application/json", r.headers["Content-Type"])
    assert.equal(201, res.result.status)
  end)

  it("activity is POST /rest/activities with kind, text and fields", function()
    assert.equal("done", run("activity", { phone = "34600111222", kind = "message_received", text = "hola",
                                           fields = { id = "3EB0" } }).status)
    assert.same({ phone = "34600111222", kind = "message_received", text = "hola", fields = { id = "3EB0" } },
                server.log[1].json)
    assert.equal("/rest/activities", server.log[1].path)
  end)

  it("lead_score is PATCH /rest/contacts/{phone}/score", function()
    assert.equal("done", run("lead_score", { phone = "34600111222@s.whatsapp.net", score = 42 }).status)
    assert.equal("PATCH", server.log[1].method)
    assert.equal("/rest/contacts/34600111222/score", server.log[1].path)
    assert.same({ score = 42 }, server.log[1].json)
    assert.equal(42, server.scores["34600111222"])
  end)

  it("task is an activity of kind task", function()
    assert.equal("done", run("task", { phone = "34600111222", title = "Call", body = "quote",
                                       due_at = "2026-01-06T09:00:00Z" }).status)
    assert.same({ phone = "34600111222", kind = "task", title = "Call", body = "quote",
                  due_at = "2026-01-06T09:00:00Z" }, server.log[1].json)
  end)

  it("keeps its Idempotency-Key across a retry after a lost answer", function()
    local res = run("activity", { phone = "34600111222", kind = "note", text = "x" }, {
      crash_after = function() return true end })
    assert.equal("crashed", res.status)
    local again = run("activity", { phone = "34600111222", kind = "note", text = "x" }, { progress = res.progress })
    assert.equal("done", again.status)
    local k1, k2 = server.log[1].headers["Idempotency-Key"], server.log[2].headers["Idempotency-Key"]
    assert.truthy(k1)
    assert.equal(k1, k2)
    assert.equal(1, #server.activities)
  end)

  it("classifies the CRM's answers", function()
    server:fail("POST", "/rest/contacts", 401)
    assert.is_true(run("contact_upsert", { phone = "34600111222" }).err.misconfigured)
    server:fail("POST", "/rest/contacts", 404)
    assert.is_true(run("contact_upsert", { phone = "34600111222" }).err.misconfigured)
    server:fail("POST", "/rest/contacts", 429, { error = "slow down" }, { ["retry-after"] = "5" })
    local e = run("contact_upsert", { phone = "34600111222" }).err
    assert.is_true(e.retry)
    assert.equal(5, e.retry_after)
    server:fail("POST", "/rest/contacts", 502)
    assert.is_true(run("contact_upsert", { phone = "34600111222" }).err.retry)
    server:fail("POST", "/rest/contacts", 422, { error = "invalid phone" })
    e = run("contact_upsert", { phone = "34600111222" }).err
    assert.is_true(e.permanent)
    assert.truthy(e.message:find("invalid phone", 1, true))
  end)

  it("refuses bad input without a request", function()
    for _, case in ipairs({
      { "contact_upsert", { phone = "12" } },
      { "lead_score", { phone = "34600111222", score = "x" } },
      { "activity", { phone = "34600111222" } },
      { "task", { phone = "34600111222" } },
      { "frobnicate", { phone = "34600111222" } },
    }) do
      local res = run(case[1], case[2])
      assert.equal("failed", res.status)
      assert.is_true(res.err.permanent)
      assert.equal(0, res.requests)
    end
  end)

  it("uses a configured prefix", function()
    run("lead_score", { phone = "34600111222", score = 1 }, { config = { generic_rest = { prefix = "/api/v2" } } })
    assert.equal("/api/v2/contacts/34600111222/score", server.log[1].path)
  end)
end)
