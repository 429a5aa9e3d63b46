-- Conversations written as specs: messages in, replies, CRM operations, alerts and facts out,
-- through scripts/main.lua with the default settings and durable timers fired by the clock.
-- Covers qualification and handoff, business hours (also across a DST change and holidays),
-- closing with the CSAT question, and returning contacts.
local Sim = require "spec.support.sim"

local P = "34600111222"
local TUE_10H = 1768294800      -- 2026-01-13 10:00 Madrid, open
local TUE_21H = 1768334400      -- 2026-01-13 21:00, closed
local SAT_1345 = 1774701900     -- 2026-03-28 13:45 CET, closed until Monday (after the DST change)
local MON_0105_20H = 1767639600 -- 2026-01-05 20:00; the 6th is a holiday
local FRI_1430 = 1768570200     -- 2026-01-16 14:30, open until 15:00

-- A customer who takes 20 seconds per message, and the debounce that follows.
local function say(sim, text, opts)
  sim:text(P, text, opts)
  sim:advance(20)
end

local function replies(sim) return sim:replies(P) end

describe("a conversation", function()
  it("qualifies a buyer step by step and hands over with a summary", function()
    local sim = Sim.new{ now = TUE_10H }
    say(sim, "Hola, quiero comprar un piso")
    say(sim, "En Palma")
    say(sim, "unos 450.000 €")
    say(sim, "lo antes posible")
    assert.same({
      "¡Hola, María! 👋 Soy el asistente virtual de Anclora Private Estates.\n\n¿En qué zona te interesa?",
      "¿Cuál es tu presupuesto aproximado?",
      "¿Para cuándo lo necesitas?",
      "¡Gracias, María! Este es el resumen de tu solicitud:\n• Interés: comprar\n• Zona: Palma\n• Tipo: piso\n"
        .. "• Presupuesto: 450.000 €\n• Plazo: lo antes posible\n\nUna persona de nuestro equipo te escribirá en breve.",
    }, replies(sim))
    -- Every send shows "typing…" first.
    assert.equals(1200, sim:sends()[1].delay)
    -- CRM: the contact with each last message, one activity per message, the score as it grew.
    local up = sim:crm("contact_upsert")
    assert.equals(4, #up)
    assert.same({ phone = P, name = "María López", last_message = "lo antes posible",
                  last_message_at = "2026-01-13T09:01:00Z" }, up[4])
    local act = sim:activities("message_received")
    assert.equals(4, #act)
    for _, a in ipairs(act) do assert.is_true(a.fields.bot_answered) end
    assert.same({ 30, 40, 55, 80 }, (function()
      local s = {}
      for _, f in ipairs(sim:crm("lead_score")) do s[#s + 1] = f.score end
      return s
    end)())
    -- Facts: four replies, the lead as it changed, the handoff.
    assert.equals(4, #sim:recorded("bot_reply"))
    assert.same({ in_reply_to = act[1].fields.message_id, latency_ms = 4000 }, sim:recorded("bot_reply")[1])
    assert.same({ score = 80, stage = "qualified" }, sim:recorded("lead")[4])
    assert.same({ { reason = "qualified" } }, sim:recorded("handoff"))
    -- The team is alerted with the summary, and the CRM gets it as an activity.
    local alert = sim:alerts("handoff")[1]
    assert.equals("Lead para atender: María López (+34600111222), puntuación 80. Motivo: lead cualificado.\n"
                  .. "• Interés: comprar\n• Zona: Palma\n• Tipo: piso\n• Presupuesto: 450.000 €\n• Plazo: lo antes posible",
                  alert.text)
    assert.same({ phone = P, name = "María López", score = 80, reason = "qualified", intent = "buy" }, alert.fields)
    assert.equals("qualified", sim:activities("handoff")[1].fields.reason)
    -- From now on a person answers: the bot stays silent.
    sim:take()
    say(sim, "¿Cuándo me escribís?")
    assert.same({}, replies(sim))
    assert.same({ bot_answered = false, reason = "handoff", type = "text",
                  message_id = sim:activities()[1].fields.message_id }, sim:activities()[1].fields)
  end)

  it("hands over at once when the customer asks for a person", function()
    local sim = Sim.new{ now = TUE_10H }
    say(sim, "Buenas, quiero hablar con una persona")
    assert.same({ "¡Hola, María! 👋 Soy el asistente virtual de Anclora Private Estates.\n\n"
                  .. "Enseguida te atiende una persona de nuestro equipo. 🙌" }, replies(sim))
    assert.equals("Lead para atender: María López (+34600111222), puntuación 5. Motivo: pide hablar con una persona.\nsin indicar",
                  sim:alerts("handoff")[1].text)
    assert.same({ { reason = "requested" } }, sim:recorded("handoff"))
  end)

  it("hands over when it does not understand twice in a row", function()
    local sim = Sim.new{ now = TUE_10H }
    say(sim, "Hola")
    say(sim, "xyz")
    say(sim, "qwerty")
    local r = replies(sim)
    assert.equals(3, #r)
    assert.truthy(r[1]:find("¿En qué puedo ayudarte?", 1, true))
    assert.truthy(r[2]:find("no te he entendido", 1, true))
    assert.equals("Enseguida te atiende una persona de nuestro equipo. 🙌", r[3])
    assert.same({ { reason = "not_understood" } }, sim:recorded("handoff"))
  end)

  it("greets without a name when the profile has none", function()
    local sim = Sim.new{ now = TUE_10H }
    say(sim, "hola", { name = false })
    assert.truthy(replies(sim)[1]:find("^¡Hola! 👋"))
    assert.is_nil(sim:crm("contact_upsert")[1].name)
  end)

  it("answers a contact known only by its LID at that LID", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:event({ event = "messages.upsert", instance = Sim.INSTANCE, data = {
      key = { remoteJid = "207581245931618@lid", fromMe = false, id = "E1F2A3", participant = "", addressingMode = "lid" },
      pushName = "María López", message = { conversation = "Hola, quiero alquilar" },
      messageType = "conversation", messageTimestamp = TUE_10H } })
    sim:advance(10)
    assert.equals("207581245931618@lid", sim:sends()[1].to)
    assert.equals("207581245931618@lid", sim:crm("contact_upsert")[1].phone)
  end)
end)

describe("business hours", function()
  it("out of hours: one polite answer, a CRM task for the next opening and an alert", function()
    local sim = Sim.new{ now = TUE_21H }
    say(sim, "Hola, quiero vender mi casa en Sóller")
    assert.same({ "¡Gracias por escribirnos, María! Ahora mismo estamos fuera de horario; te responderemos "
                  .. "mañana a las 09:00." }, replies(sim))
    local task = sim:crm("task")
    assert.equals(1, #task)
    assert.same({ phone = P, title = "Responder a María López (34600111222)", due_at = "2026-01-14T08:00:00Z",
                  body = "Escribió fuera de horario: \"Hola, quiero vender mi casa en Sóller\"\n"
                         .. "• Interés: vender\n• Zona: Sóller\n• Tipo: casa" }, task[1])
    local alert = sim:alerts("out_of_hours")[1]
    assert.equals("Mensaje fuera de horario de María López (+34600111222): \"Hola, quiero vender mi casa en "
                  .. "Sóller\". Tarea creada para mañana a las 09:00.", alert.text)
    assert.same({ phone = P, due_at = "2026-01-14T08:00:00Z" }, alert.fields)
    -- What it said still counts for the lead.
    assert.same({ { phone = P, score = 40 } }, sim:crm("lead_score"))
    -- A second message in the same conversation: no second answer, task or alert.
    sim:take()
    say(sim, "¿Me llamáis mañana?")
    assert.same({}, replies(sim))
    assert.same({}, sim:crm("task"))
    assert.same({}, sim:alerts())
    assert.same("out_of_hours", sim:activities()[1].fields.reason)
    assert.is_false(sim:activities()[1].fields.bot_answered)
    -- Next morning, a new conversation: the bot greets again and carries on with the lead.
    sim:advance(12 * 3600 + 30 * 60 - 40) -- Wednesday 09:30
    sim:take()
    say(sim, "buenos días")
    assert.same({ "¡Hola de nuevo, María! 😊\n\n¿Cuándo te gustaría venderla?" }, replies(sim))
  end)

  it("a new conversation after the window gets a new out-of-hours answer", function()
    local sim = Sim.new{ now = TUE_21H }
    say(sim, "hola")
    sim:advance(25 * 3600) -- Wednesday 22:00
    sim:take()
    say(sim, "hola otra vez")
    assert.equals(1, #replies(sim))
    assert.equals(1, #sim:crm("task"))
    assert.equals("2026-01-15T08:00:00Z", sim:crm("task")[1].due_at)
  end)

  it("next opening across the spring DST change", function()
    local sim = Sim.new{ now = SAT_1345 }
    say(sim, "¿Tenéis áticos en alquiler?")
    assert.same({ "¡Gracias por escribirnos, María! Ahora mismo estamos fuera de horario; te responderemos "
                  .. "el lunes a las 09:00." }, replies(sim))
    assert.equals("2026-03-30T07:00:00Z", sim:crm("task")[1].due_at) -- 09:00 CEST
  end)

  it("holidays count as closed", function()
    local sim = Sim.new{ now = MON_0105_20H }
    say(sim, "hola")
    assert.truthy(replies(sim)[1]:find("el miércoles a las 09:00", 1, true))
    assert.equals("2026-01-07T08:00:00Z", sim:crm("task")[1].due_at)
    -- Tuesday the 6th at 11:00, a weekday inside the weekly hours: still closed.
    sim = Sim.new{ now = MON_0105_20H + 15 * 3600 }
    say(sim, "¿hoy no abrís?")
    assert.truthy(replies(sim)[1]:find("mañana a las 09:00", 1, true))
    assert.equals("2026-01-07T08:00:00Z", sim:crm("task")[1].due_at)
  end)

  it("follows a configured time zone and schedule", function()
    local sim = Sim.new{ now = TUE_21H, config = { hours = { timezone = "America/Sao_Paulo",
      weekly = { tue = { "09:00-18:00" } }, holidays = {} } } }
    -- 21:00 in Madrid is 17:00 in Sao Paulo: open.
    say(sim, "hola")
    assert.truthy(replies(sim)[1]:find("¿En qué puedo ayudarte?", 1, true))
    assert.same({}, sim:crm("task"))
  end)
end)

describe("closing and CSAT", function()
  local function qualified(now)
    local sim = Sim.new{ now = now or TUE_10H }
    say(sim, "Quiero hablar con un asesor")
    return sim
  end

  it("the close keyword from the business phone asks the satisfaction question", function()
    local sim = qualified()
    sim:business(P, "Un placer, ¡hasta pronto!")
    sim:advance(60)
    sim:take()
    sim:business(P, "#cerrar")
    assert.same({ "¿Qué tal te hemos atendido? Responde con un número del 1 (muy mal) al 5 (excelente)." },
                replies(sim))
    assert.is_nil(sim:timer(P, "csat"))
    sim:take()
    say(sim, "5")
    assert.same({ "¡Gracias por tu valoración! 🙏" }, replies(sim))
    assert.same({ { score = 5 } }, sim:recorded("csat"))
    assert.same({ phone = P, kind = "csat", text = "CSAT 5/5", fields = { score = 5 } }, sim:activities("csat")[1])
    assert.is_true(sim:activities("message_received")[1].fields.bot_answered)
  end)

  it("a handed-over conversation quiet for the configured period is closed with the question", function()
    local sim = qualified()
    local t = sim:timer(P, "csat")
    assert.equals((TUE_10H + 4 + 24 * 3600) * 1000, t.due_at) -- from the handoff, after the debounce
    -- The customer writing again pushes the quiet period back.
    sim:advance(3600)
    say(sim, "gracias")
    sim:take()
    sim:advance(24 * 3600 - 30)
    assert.same({}, replies(sim))
    sim:advance(60)
    assert.same({ "¿Qué tal te hemos atendido? Responde con un número del 1 (muy mal) al 5 (excelente)." },
                replies(sim))
    sim:take()
    say(sim, "⭐⭐⭐⭐")
    assert.same({ { score = 4 } }, sim:recorded("csat"))
  end)

  it("the question waits for business hours", function()
    local sim = qualified(FRI_1430) -- quiet until Saturday 14:30, closed until Monday 09:00
    sim:take()
    sim:advance(24 * 3600 + 60)
    assert.same({}, replies(sim))
    local t = sim:timer(P, "csat")
    assert.equals(1768809600 * 1000, t.due_at) -- Monday 2026-01-19 09:00
    sim:advance(2 * 24 * 3600)
    assert.equals(1, #replies(sim))
    assert.truthy(replies(sim)[1]:find("¿Qué tal te hemos atendido?", 1, true))
  end)

  it("another answer than a score starts a new conversation, greeting the contact again", function()
    local sim = qualified()
    sim:business(P, "#cerrar")
    sim:take()
    say(sim, "Hola, ahora quiero alquilar")
    assert.same({}, sim:recorded("csat"))
    assert.equals("¡Hola de nuevo, María! 😊\n\n¿En qué zona te interesa?", replies(sim)[1])
  end)

  it("a score after the answer window is a normal message", function()
    local sim = qualified()
    sim:business(P, "#cerrar")
    sim:advance(25 * 3600)
    sim:take()
    say(sim, "3")
    assert.same({}, sim:recorded("csat"))
  end)

  it("a conversation a person started and the contact answered is asked too", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:business(P, "Hola María, te escribo por la visita de ayer")
    sim:advance(60)
    say(sim, "¡Hola! Sí, me gustó mucho")
    assert.same({}, replies(sim))
    sim:advance(24 * 3600)
    assert.same({ "¿Qué tal te hemos atendido? Responde con un número del 1 (muy mal) al 5 (excelente)." },
                replies(sim))
  end)

  it("no question when the contact never wrote in the conversation", function()
    local sim = Sim.new{ now = TUE_10H }
    sim:business(P, "Hola María, te escribo por tu visita")
    sim:business(P, "#cerrar")
    assert.same({}, replies(sim))
  end)
end)
