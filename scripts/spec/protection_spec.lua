-- The bot's protections, as conversations: debounce on a durable timer (and typing presence),
-- the per-contact reply cap, human takeover and resume, loops with another bot, stale messages,
-- and every ignore rule.
local Sim = require "spec.support.sim"

local P = "34600111222"
local TUE_10H = 1768294800 -- 2026-01-13 10:00 Madrid, open

local function replies(sim) return sim:replies(P) end

describe("debounce", function()
  it("several messages in quick succession get one answer, on the timer alone", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:text(P, "Hola")
    sim:advance(2)
    sim:text(P, "quiero comprar")
    sim:advance(2)
    sim:text(P, "un piso en Palma")
    -- One timer per contact, replaced by each message: due 4 s after the last one.
    assert.equals((TUE_10H + 8) * 1000, sim:timer(P, "debounce").due_at)
    sim:advance(3.9)
    assert.same({}, replies(sim))
    sim:advance(0.2)
    assert.same({ "¡Hola, María! 👋 Soy el asistente virtual de Anclora Private Estates.\n\n"
                  .. "¿Cuál es tu presupuesto aproximado?" }, replies(sim))
    -- One activity per message, all answered by the one reply.
    local act = sim:activities("message_received")
    assert.equals(3, #act)
    for _, a in ipairs(act) do assert.is_true(a.fields.bot_answered) end
    assert.equals(act[3].fields.message_id, sim:recorded("bot_reply")[1].in_reply_to)
    assert.is_nil(sim:state(P).pending)
  end)

  it("never waits longer than debounce_max after the first message", function()
    local sim = Sim.new{ now = TUE_10H }
    for i = 1, 20 do
      sim:text(P, "y otra cosa " .. i)
      sim:advance(3)
    end
    local sends = sim:sends()
    assert.is_true(#sends >= 1)
    assert.equals(TUE_10H + 40, sends[1].at)
  end)

  it("a typing presence extends the wait; its absence does not matter", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:text(P, "Quiero alquilar")
    sim:advance(3)
    sim:presence(P, "composing")
    assert.equals((TUE_10H + 3 + 8) * 1000, sim:timer(P, "debounce").due_at)
    sim:advance(5) -- t + 8: the plain debounce would have answered at t + 4
    assert.same({}, replies(sim))
    sim:text(P, "un piso")
    sim:advance(4.1)
    assert.equals(1, #replies(sim))
    assert.equals("composing", sim:state(P).presence)
  end)

  it("a typing presence that came before the timer fired still delays the answer", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:presence(P, "recording")
    assert.is_nil(sim:timer(P, "debounce")) -- nothing waiting: only remembered
    sim:advance(1)
    sim:text(P, "hola")
    sim:advance(4.1) -- the timer fires, but the recording presence is 5 s old: wait until it is 8
    assert.same({}, replies(sim))
    sim:advance(3)
    assert.equals(1, #replies(sim))
  end)
end)

describe("rate cap", function()
  it("at most the configured replies per contact and minute; the rest waits", function()
    local sim = Sim.new{ now = TUE_10H, config = { bot = { max_not_understood = 99 } } }
    for i = 1, 6 do
      sim:text(P, "hola de nuevo " .. i)
      sim:advance(10)
    end
    -- Replies at +4, +14, +24, +34; the fifth is held until the first leaves the minute.
    assert.equals(4, #replies(sim))
    assert.is_true(sim:metric("bot_rate_limited") >= 1)
    assert.equals((TUE_10H + 64) * 1000, sim:timer(P, "debounce").due_at)
    sim:advance(10)
    assert.equals(5, #replies(sim))
  end)

  it("follows the configured cap", function()
    local sim = Sim.new{ now = TUE_10H, config = { bot = { max_replies_per_minute = 1 } } }
    sim:text(P, "hola")
    sim:advance(10)
    sim:text(P, "¿hola?")
    sim:advance(10)
    assert.equals(1, #replies(sim))
  end)
end)

describe("human takeover", function()
  it("a message from the business phone silences the bot for the configured time", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:text(P, "Hola, quiero comprar")
    sim:advance(10)
    sim:business(P, "Hola María, soy Laura de la agencia. ¿Qué zona te interesa?")
    assert.same({ { reason = "takeover" } }, sim:recorded("handoff"))
    sim:take()
    sim:advance(60)
    sim:text(P, "Palma")
    sim:advance(10)
    assert.same({}, replies(sim))
    assert.equals("takeover", sim:activities()[1].fields.reason)
    -- Each message of the person extends the silence; it ends two hours after the last one.
    sim:advance(3600)
    sim:business(P, "Te mando opciones")
    sim:advance(2 * 3600 - 10)
    sim:text(P, "¿alguna novedad?")
    sim:advance(10)
    assert.same({}, replies(sim))
    sim:advance(30)
    sim:text(P, "¿hola?")
    sim:advance(10)
    assert.equals(1, #replies(sim))
    -- The takeover was recorded once.
    assert.same({}, sim:recorded("handoff"))
  end)

  it("drops the messages waiting for the debounce", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:text(P, "hola")
    sim:advance(1)
    sim:business(P, "¡Hola! Te atiendo yo")
    assert.is_nil(sim:timer(P, "debounce"))
    sim:advance(10)
    assert.same({}, replies(sim))
    assert.same({ "takeover" }, { sim:activities()[1].fields.reason })
  end)

  it("another API client counts; wahook's own sends and their early echoes do not", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:text(P, "hola")
    sim:advance(10) -- our reply; the simulated runtime echoes it as send.message from wahook
    assert.same({}, sim:recorded("handoff"))
    -- The echo arriving before the runtime knows the id is ours: recognised by its text.
    sim:api(P, replies(sim)[1])
    assert.same({}, sim:recorded("handoff"))
    -- A text from a CRM or inbox tool through the API is a person.
    sim:api(P, "Hola María, te escribe Laura")
    assert.same({ { reason = "takeover" } }, sim:recorded("handoff"))
    assert.equals(1, sim:metric("bot_takeovers", { origin = "api" }))
  end)

  it("the resume keyword from the business phone lets the bot answer again at once", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:text(P, "quiero vender")
    sim:advance(10)
    sim:business(P, "Te llamo luego")
    sim:business(P, " #BOT ")
    sim:take()
    sim:text(P, "en Palma")
    sim:advance(10)
    assert.equals(1, #replies(sim))
    assert.equals(1, sim:metric("bot_resumed"))
  end)

  it("history from the business phone is no takeover", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:business(P, "mensaje antiguo", { ts = TUE_10H - 3 * 3600 })
    assert.same({}, sim:recorded("handoff"))
    sim:text(P, "hola")
    sim:advance(10)
    assert.equals(1, #replies(sim))
  end)
end)

describe("loops with another bot", function()
  it("an auto-reply signature gets no answer", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:text(P, "Respuesta automática: estoy fuera de la oficina hasta el lunes")
    sim:advance(10)
    assert.same({}, replies(sim))
    assert.equals("auto_reply", sim:activities()[1].fields.reason)
  end)

  -- (Not understanding it would hand over first; that limit is lifted here.)
  local LOOSE = { bot = { max_not_understood = 99 } }

  it("a contact answering instantly every time is muted, and the team told", function()
    local sim = Sim.new{ now = TUE_10H, config = LOOSE }
    sim:text(P, "hola")
    for i = 1, 6 do
      sim:advance(5.2) -- debounce 4 s plus the 1.2 s typing delay: our reply has just arrived
      sim:text(P, "Gracias por su mensaje " .. i)
    end
    sim:advance(30)
    local n = #replies(sim)
    assert.equals(4, n)
    assert.equals(1, #sim:alerts("bot_loop"))
    assert.equals("Posible bucle con otro bot en la conversación con +34600111222: el asistente se silencia "
                  .. "durante 360 minutos.", sim:alerts("bot_loop")[1].text)
    assert.equals(1, sim:metric("bot_loops"))
    -- Muted: later messages get no answer until the mute ends.
    sim:advance(5 * 3600)
    sim:text(P, "¿hola?")
    sim:advance(10)
    assert.equals(n, #replies(sim))
    sim:advance(3600)
    sim:text(P, "¿hola?")
    sim:advance(10)
    assert.equals(n + 1, #replies(sim))
  end)

  it("the same text again and again is a loop too", function()
    local sim = Sim.new{ now = TUE_10H, config = LOOSE }
    for _ = 1, 5 do
      sim:text(P, "MENU PRINCIPAL: pulse 1")
      sim:advance(30)
    end
    assert.equals(3, #replies(sim))
    assert.equals(1, #sim:alerts("bot_loop"))
  end)
end)

describe("ignored", function()
  local function body(jid, extra)
    local key = { remoteJid = jid, fromMe = false, id = "X1", participant = extra and extra.participant or "" }
    return { event = "messages.upsert", instance = Sim.INSTANCE, data = {
      key = key, pushName = "Alguien", message = { conversation = "hola" }, messageType = "conversation",
      messageTimestamp = TUE_10H } }
  end

  local function check(sim, reason)
    sim:advance(10)
    assert.same({}, sim.actions)
    assert.equals(1, sim:metric("messages_ignored", { reason = reason }))
  end

  it("groups", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:event(body("120363025246125888@g.us", { participant = "34600333444@s.whatsapp.net" }))
    check(sim, "group")
  end)

  it("status@broadcast and broadcast lists", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:event(body("status@broadcast", { participant = "34600111222@s.whatsapp.net" }))
    check(sim, "status")
    sim = Sim.new{ now = TUE_10H }
    sim:event(body("1760000000@broadcast", { participant = "34600111222@s.whatsapp.net" }))
    check(sim, "broadcast")
  end)

  it("newsletters", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:event(body("120363198765432109@newsletter"))
    check(sim, "newsletter")
  end)

  it("blacklisted numbers, written any way", function()
    local sim = Sim.new{ now = TUE_10H, config = { bot = { blacklist = { "+34 600 111 222" } } } }
    sim:text(P, "hola")
    check(sim, "blacklist")
    assert.is_nil(sim:state(P))
  end)

  it("blacklisted LIDs", function()
    local sim = Sim.new{ now = TUE_10H, config = { bot = { blacklist = { "207581245931618@lid" } } } }
    sim:event(body("207581245931618@lid"))
    check(sim, "blacklist")
  end)

  it("our own messages", function()
    local sim = Sim.new{ now = TUE_10H }
    sim.own_ids["B7E2OWN"] = true
    sim:event({ event = "messages.upsert", instance = Sim.INSTANCE, data = {
      key = { remoteJid = P .. "@s.whatsapp.net", fromMe = true, id = "B7E2OWN" },
      message = { conversation = "hola" }, messageType = "conversation", messageTimestamp = TUE_10H } })
    check(sim, "own")
  end)

  it("old messages (history sync) are recorded but not answered", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:text(P, "mensaje de ayer", { ts = TUE_10H - 86400 })
    sim:advance(10)
    assert.same({}, replies(sim))
    assert.equals(1, #sim:crm("contact_upsert"))
    assert.same({ bot_answered = false, reason = "old", type = "text", message_id = sim:activities()[1].fields.message_id },
                sim:activities()[1].fields)
  end)

  it("a disabled bot still feeds the CRM", function()
    local sim = Sim.new{ now = TUE_10H, config = { bot = { enabled = false } } }
    sim:text(P, "hola")
    sim:advance(10)
    assert.same({}, replies(sim))
    assert.equals("disabled", sim:activities()[1].fields.reason)
  end)
end)

describe("state", function()
  it("stays small over a long conversation", function()
    local sim = Sim.new{ now = TUE_10H }
    local long = string.rep("texto largo ", 200)
    for i = 1, 300 do
      sim:text(P, long .. i)
      sim:advance(i % 3 == 0 and 30 or 1)
    end
    local size = #require("cjson").encode(sim:state(P))
    assert.is_true(size < 16 * 1024, "state is " .. size .. " bytes")
  end)
end)
