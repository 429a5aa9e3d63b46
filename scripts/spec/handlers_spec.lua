-- Specs for scripts/main.lua's handlers, driven by every body in fixtures/evolution/: what each
-- event queues (CRM operations, replies, alerts, mail, facts, timers) with the default settings,
-- one fresh contact and the clock at the fixture's own time (a Wednesday afternoon in Madrid,
-- inside business hours). A new fixture without an entry here fails the suite.
local Sim = require "spec.support.sim"
local fixtures = require "spec.support.fixtures"

local MARIA = "34600111222"
local ADMIN = "admin@example.com"

-- The clock for a fixture: its messageTimestamp (or the text fixture's) plus one second.
local function clock(body)
  local ts = type(body.data) == "table" and body.data.messageTimestamp
  return math.tointeger(ts) or 1761141807
end

local function run(name, config)
  local body = fixtures.evolution(name)
  local sim = Sim.new{ now = clock(body) + 1, config = config or { admin_email = ADMIN } }
  sim:event(body)
  return sim
end

local function nothing(sim)
  assert.same({}, sim.actions)
  assert.same({}, sim.facts)
  assert.is_nil(sim:state(MARIA))
  assert.is_nil(sim:instance_state())
end

-- A message from María that the bot takes: the CRM contact at once, the answer after the
-- debounce, with the activity saying it was answered.
local function taken(sim, last_message, type)
  local up = sim:crm("contact_upsert")
  assert.equals(1, #up)
  assert.same({ phone = MARIA, name = "María López", last_message = last_message,
                last_message_at = require("bot.text").iso(sim.now - 1) }, up[1])
  assert.same({}, sim:replies())
  assert.is_table(sim:timer(MARIA, "debounce"))
  assert.equals(1, sim:metric("messages_received", { type = type }))
  sim:advance(5)
  local replies = sim:replies(MARIA)
  assert.equals(1, #replies)
  assert.truthy(replies[1]:find("¡Hola, María! 👋", 1, true), replies[1])
  local act = sim:activities("message_received")
  assert.equals(1, #act)
  assert.equals(MARIA, act[1].phone)
  assert.is_true(act[1].fields.bot_answered)
  assert.equals(type, act[1].fields.type)
  assert.equals(1, #sim:recorded("bot_reply"))
  return replies[1], act[1]
end

local function ignored(sim, reason)
  assert.same({}, sim.actions)
  assert.same({}, sim:crm())
  assert.equals(1, sim:metric("messages_ignored", { reason = reason }))
  assert.is_nil(sim:state(MARIA))
end

local EXPECTED = {
  ["chats-upsert.json"] = nothing,
  ["contacts-upsert.json"] = nothing,
  ["groups-upsert.json"] = nothing,
  ["messages-update-delivery.json"] = nothing,
  ["messages-update-read.json"] = nothing,
  ["connection-update-connecting.json"] = function(sim)
    assert.same({}, sim.actions)
    assert.equals("connecting", sim:instance_state().conn_state)
    assert.equals(1, sim:metric("connection_updates", { state = "connecting" }))
  end,
  ["connection-update-open.json"] = function(sim)
    assert.same({}, sim:alerts())
    local log = sim.logs[#sim.logs]
    assert.equals("WhatsApp connected", log.msg)
    assert.same({ instance = "acme-bot", number = "34600999888", profile = "Acme Store" }, log.fields)
  end,
  ["connection-update-close.json"] = function(sim)
    local a = sim:alerts("connection_closed")
    assert.equals(1, #a)
    assert.equals("WhatsApp desconectado en la instancia acme-bot: la sesión se cerró desde el "
                  .. "teléfono (código 401).", a[1].text)
    assert.same({ instance = "acme-bot", reason = "logged_out", code = 401, suppressed = 0 }, a[1].fields)
  end,
  ["qrcode-updated.json"] = function(sim)
    local m = sim:mails()
    assert.equals(1, #m)
    assert.same({ ADMIN }, m[1].to)
    assert.equals("Código QR para vincular WhatsApp (acme-bot)", m[1].subject)
    local att = m[1].attachments[1]
    assert.equals("whatsapp-qr-acme-bot.png", att.filename)
    assert.equals("image/png", att.content_type)
    local body = fixtures.evolution("qrcode-updated.json")
    assert.equals(body.data.qrcode.base64, "data:image/png;base64," .. att.data_base64)
  end,
  ["presence-update.json"] = function(sim)
    assert.same({}, sim.actions)
    assert.equals("composing", sim:state(MARIA).presence)
  end,
  ["messages-upsert-text.json"] = function(sim)
    local reply = taken(sim, "Hola, ¿tenéis cita para mañana por la mañana?", "text")
    -- "cita" is a visit: the visit flow asks which property.
    assert.equals("¡Hola, María! 👋 Soy el asistente virtual de Anclora Private Estates.\n\n"
                  .. "¿Qué propiedad te gustaría visitar? Dime la referencia o la zona.", reply)
    assert.same({ { score = 15, stage = "engaged" } }, sim:recorded("lead"))
    assert.same({ { phone = MARIA, score = 15 } }, sim:crm("lead_score"))
  end,
  ["messages-upsert-extended-text.json"] = function(sim)
    taken(sim, "La de las 10:00, gracias! Mi web por si acaso: https://maria.example.org", "text")
  end,
  ["messages-upsert-image.json"] = function(sim) taken(sim, "Así quedó el pedido 📦", "image") end,
  ["messages-upsert-image-base64.json"] = function(sim) taken(sim, "Y esta es la factura", "image") end,
  ["messages-upsert-document.json"] = function(sim) taken(sim, "Te paso el presupuesto", "document") end,
  ["messages-upsert-audio.json"] = function(sim)
    local reply = taken(sim, "[nota de voz]", "voice")
    assert.truthy(reply:find("no puedo escuchar audios", 1, true), reply)
  end,
  ["messages-upsert-location.json"] = function(sim)
    local reply, act = taken(sim, "[ubicación]", "location")
    assert.truthy(reply:find("¿En qué puedo ayudarte?", 1, true), reply)
    assert.equals("[ubicación]", act.text)
  end,
  ["messages-upsert-lid.json"] = function(sim)
    -- The chat is addressed by LID; the reply goes to the phone the key carries.
    taken(sim, "¿Me confirmas la dirección?", "text")
    assert.equals(MARIA, sim:sends()[1].to)
  end,
  ["messages-upsert-group.json"] = function(sim) ignored(sim, "group") end,
  ["messages-upsert-status-broadcast.json"] = function(sim) ignored(sim, "status") end,
  ["messages-upsert-reaction.json"] = function(sim) ignored(sim, "reaction") end,
  ["messages-upsert-fromme.json"] = function(sim)
    -- Typed on the business phone: a person took over.
    assert.same({}, sim:crm())
    assert.same({ { reason = "takeover" } }, sim:recorded("handoff"))
    assert.equals(sim.now + 7200, sim:state(MARIA).takeover_until)
  end,
  ["send-message.json"] = function(sim)
    -- Sent by another API client (not wahook's id): a takeover too.
    assert.same({ { reason = "takeover" } }, sim:recorded("handoff"))
    assert.equals(1, sim:metric("bot_takeovers", { origin = "api" }))
  end,
}

describe("handlers on the shared fixtures", function()
  it("cover every fixture", function()
    for _, name in ipairs(fixtures.evolution_names()) do
      assert.is_function(EXPECTED[name], name .. " has no expectation in handlers_spec.lua")
    end
  end)

  for _, name in ipairs(fixtures.evolution_names()) do
    it(name, function()
      if EXPECTED[name] then EXPECTED[name](run(name)) end
    end)
  end

  it("own messages echoed by send.message do nothing", function()
    local body = fixtures.evolution("send-message.json")
    local sim = Sim.new{ now = clock(body) + 1 }
    sim.own_ids[body.data.key.id] = true
    sim:event(body)
    assert.same({}, sim.actions)
    assert.same({}, sim.facts)
    assert.is_nil(sim:state(MARIA))
  end)

  it("a message without a normalised view is skipped with a warning", function()
    local sim = Sim.new{}
    sim:run("messages.upsert", { event = "messages.upsert", instance = "acme-bot", id = 7, data = {} }, nil)
    assert.same({}, sim.actions)
    assert.equals("warn", sim.logs[1].level)
  end)
end)
