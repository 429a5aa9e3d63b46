-- Specs for the bot's pure parts: text folding and templates (bot/text.lua), what a message says
-- (bot/understand.lua), the conversation steps (bot/flow.lua) and the lead score (bot/score.lua),
-- with the default configuration.
local fake = require("spec.support.wahook_fake")._install()
local settings = require "settings"
local text = require "bot.text"
local understand = require "bot.understand"
local flow = require "bot.flow"
local score = require "bot.score"

local cfg
local function setup(config)
  fake._reset{ config = config or {} }
  cfg = settings.get()
end

describe("bot.text", function()
  it("folds case, accents and punctuation", function()
    assert.equals("hola que tal atico en soller", text.fold("¡Hola, ¿QUÉ tal? Ático en SÓLLER!"))
    assert.equals("nino cafe ano", text.fold("NIÑO   café  año"))
    assert.equals("", text.fold("👋🏻 …"))
    assert.equals("1 200 000", text.fold("1.200.000 €"))
  end)

  it("matches keywords as whole words, or as word starts with a trailing *", function()
    assert.is_nil(text.find_word("quiero comprar", "compra"))
    assert.truthy(text.find_word("quiero comprar", "compra", true))
    assert.is_nil(text.find_word("descompra", "compra", true))
    assert.truthy(text.find_word("busco una casa grande", "busco una casa"))
    assert.is_nil(text.find_word("un yate", "ya"))
    assert.truthy(text.find_word("lo quiero ya", "ya"))
    assert.same({ word = "inmediat", prefix = true, label = "Inmediat*" }, text.keyword("Inmediat*"))
    assert.same({ word = "atico", prefix = false, label = "Ático" }, text.keyword("Ático"))
  end)

  it("fills templates, keeping unknown placeholders visible", function()
    assert.equals("Hola Ana, {typo}", text.fill("Hola {name}, {typo}", { name = "Ana" }))
  end)

  it("truncates without cutting a character", function()
    local s = text.truncate(string.rep("ñ", 10), 9)
    assert.truthy(utf8.len(s))
    assert.is_true(#s <= 9)
    assert.equals("abc", text.truncate("abc", 3))
  end)

  it("formats amounts, dates and first names", function()
    assert.equals("1.234.567", text.thousands(1234567))
    assert.equals("950", text.thousands(950))
    assert.equals("2026-03-30T07:00:00Z", text.iso(1774854000))
    assert.equals("María", text.first_name("María López"))
    assert.is_nil(text.first_name("🏠🏠"))
    assert.is_nil(text.first_name("+34 600"))
    assert.is_nil(text.first_name(nil))
  end)
end)

describe("bot.understand", function()
  before_each(function() setup() end)

  local function intents(s)
    local found, list = understand.text(s, cfg).intents, {}
    for k in pairs(found) do list[#list + 1] = k end
    table.sort(list)
    return table.concat(list, ",")
  end

  it("detects intents by keywords, accent- and case-insensitive", function()
    assert.equals("buy", intents("QUIERO COMPRAR una casa"))
    assert.equals("rent", intents("Busco algo de alquiler"))
    assert.equals("sell", intents("Quiero poner en venta mi piso"))
    assert.equals("visit", intents("¿Podemos concertar una visita?"))
    assert.equals("human", intents("Prefiero hablar con una persona"))
    assert.equals("prices", intents("¿Qué PRECIO tiene?"))
    assert.equals("", intents("Buenas tardes"))
  end)

  it("detects intents by patterns", function()
    assert.equals("sell", intents("¿Cuánto vale mi ático?"))
    assert.equals("buy", intents("quiero una casa en Palma"))
    assert.equals("prices", intents("cuánto cobráis"))
    assert.equals("buy,visit", intents("Quiero comprar y verla"))
  end)

  it("finds zone, type and timing, first mention wins", function()
    local h = understand.text("Un ático o una villa en Sóller, lo antes posible", cfg)
    assert.equals("Sóller", h.zone)
    assert.equals("ático", h.type)
    assert.equals("inmediato", h.timing)
    h = understand.text("en el PORT D'ANDRATX, sin prisa", cfg)
    assert.equals("Port d'Andratx", h.zone)
    assert.equals("sin_prisa", h.timing)
  end)

  it("reads budgets in the usual spellings", function()
    local cases = {
      { "unos 450.000€", 450000 }, { "1,5 millones", 1500000 }, { "300k", 300000 },
      { "300 mil euros", 300000 }, { "2,5M€", 2500000 }, { "1.200.000", 1200000 },
      { "450 000 €", 450000 }, { "presupuesto 350000", 350000 }, { "1200 al mes", 1200 },
      { "900 mensuales", 900 },
    }
    for _, c in ipairs(cases) do assert.equals(c[2], understand.budget(c[1]), c[1]) end
  end)

  it("does not take other numbers for money", function()
    for _, s in ipairs({ "2 habitaciones y 3 baños", "80 m2", "en 3 meses", "para 2026",
                         "mi teléfono es 600111222", "800" }) do
      assert.is_nil(understand.budget(s), s)
    end
    assert.equals(800, understand.budget("800", true)) -- but a bare answer to the question counts
  end)

  it("takes a free answer for the slot just asked", function()
    local h = understand.text("Por la zona del puerto", cfg, "zone")
    assert.equals("Por la zona del puerto", h.zone)
    assert.equals("zone", h.free)
    assert.is_nil(understand.text("no sé", cfg, "budget").budget)
    -- Not when the message asks for something else.
    assert.is_nil(understand.text("quiero hablar con una persona", cfg, "zone").zone)
  end)

  it("reads CSAT answers", function()
    local cases = { { "4", 4 }, { "Un 5", 5 }, { "4/5", 4 }, { "⭐⭐⭐", 3 }, { "cinco", 5 },
                    { "5 estrellas", 5 }, { "1 de 5", 1 } }
    for _, c in ipairs(cases) do assert.equals(c[2], understand.csat(c[1]), c[1]) end
    for _, s in ipairs({ "6", "0", "hola", "el 4 de mayo quiero ver la casa", "" }) do
      assert.is_nil(understand.csat(s), s)
    end
  end)
end)

describe("bot.flow", function()
  before_each(function() setup() end)

  local function step(conv, lead, s, ctx)
    ctx = ctx or {}
    ctx.cfg = cfg
    if ctx.has_text == nil then ctx.has_text = s ~= "" end
    return flow.step(conv, lead, understand.text(s, cfg, conv.asking), ctx)
  end

  it("greets by name and asks the first missing question of the flow", function()
    local conv, lead = {}, {}
    local out = step(conv, lead, "Hola, quiero comprar un piso", { name = "María" })
    assert.same({ "¡Hola, María! 👋 Soy el asistente virtual de Anclora Private Estates.", "¿En qué zona te interesa?" },
                out.lines)
    assert.equals("buy", conv.intent)
    assert.equals("zone", conv.asking)
    assert.equals("piso", lead.type)
    out = step(conv, lead, "Palma")
    assert.same({ "¿Cuál es tu presupuesto aproximado?" }, out.lines)
    assert.equals("Palma", lead.zone)
  end)

  it("greets returning contacts and those without a name", function()
    assert.equals("¡Hola de nuevo, Ana! 😊", step({}, {}, "hola", { name = "Ana", returning = true }).lines[1])
    assert.equals("¡Hola! 👋 Soy el asistente virtual de Anclora Private Estates.", step({}, {}, "hola").lines[1])
  end)

  it("summarises a qualified lead and hands over", function()
    local conv, lead = {}, {}
    step(conv, lead, "Quiero alquilar un piso en Palma", { name = "Jordi" })
    local out = step(conv, lead, "1.500 al mes", { name = "Jordi" })
    assert.same({ "¿Para cuándo lo necesitas?" }, out.lines)
    out = step(conv, lead, "el mes que viene, sin prisa", { name = "Jordi" })
    assert.equals("qualified", out.handoff)
    assert.equals("qualified", conv.stage)
    assert.equals("¡Gracias, Jordi! Este es el resumen de tu solicitud:\n"
                  .. "• Interés: alquilar\n• Zona: Palma\n• Tipo: piso\n• Presupuesto: 1.500 €\n"
                  .. "• Plazo: sin prisa\n\nUna persona de nuestro equipo te escribirá en breve.", out.lines[1])
  end)

  it("uses the intent's own questions", function()
    assert.same({ "¿En qué zona está la propiedad que quieres vender?" },
                step({ greeted = true }, {}, "quiero vender").lines)
    assert.equals("¿Cuánto quieres pagar al mes, aproximadamente?",
                  step({ greeted = true, intent = "rent" }, { zone = "Palma", type = "piso" }, "vale").lines[1])
  end)

  it("hands over at once when a person is asked for", function()
    local conv = { greeted = true, intent = "buy", asking = "zone" }
    local out = step(conv, {}, "Quiero hablar con un asesor")
    assert.equals("requested", out.handoff)
    assert.same({ "Enseguida te atiende una persona de nuestro equipo. 🙌" }, out.lines)
    assert.is_nil(conv.asking)
  end)

  it("answers prices and goes on with the flow", function()
    local conv = { greeted = true }
    local out = step(conv, {}, "¿Qué precios tenéis para comprar?")
    assert.equals(2, #out.lines)
    assert.equals(cfg.texts.prices, out.lines[1])
    assert.equals("¿En qué zona te interesa?", out.lines[2])
  end)

  it("hands over after the configured misunderstandings in a row", function()
    local conv = { greeted = true }
    local out = step(conv, {}, "asdfgh")
    assert.same({ cfg.texts.not_understood }, out.lines)
    assert.is_nil(out.handoff)
    out = step(conv, {}, "qwerty")
    assert.equals("not_understood", out.handoff)
  end)

  it("skips a slot after two answers that do not fill it", function()
    local conv, lead = { greeted = true }, {}
    step(conv, lead, "comprar piso en Palma")
    assert.equals("budget", conv.asking)
    assert.same({ "¿Cuál es tu presupuesto aproximado?" }, step(conv, lead, "depende").lines)
    local out = step(conv, lead, "no lo sé")
    assert.same({ "¿Para cuándo lo necesitas?" }, out.lines)
    assert.is_true(conv.skipped.budget)
  end)

  it("asks to write when only an audio came", function()
    local out = step({ greeted = true }, {}, "", { has_audio = true })
    assert.same({ cfg.texts.audio }, out.lines)
  end)

  it("a visit adds to buying instead of replacing it", function()
    local conv, lead = { greeted = true }, {}
    step(conv, lead, "quiero comprar")
    step(conv, lead, "y me gustaría visitar alguna")
    assert.equals("buy", conv.intent)
    assert.is_true(lead.visit)
    assert.truthy(flow.summary(lead, cfg):find("• Visita: sí", 1, true))
  end)
end)

describe("bot.score", function()
  before_each(function() setup() end)

  it("adds the configured points and caps them", function()
    assert.equals(0, score.compute({}, cfg.lead_score))
    assert.equals(20, score.compute({ intent = "buy" }, cfg.lead_score))
    -- buy 20 + zone 10 + type 10 + budget 15 + >= 1M 20 + timing 5 + inmediato 20 = 100
    assert.equals(100, score.compute({ intent = "buy", zone = "Palma", type = "villa", budget = 1200000,
                                        timing = "inmediato" }, cfg.lead_score))
    assert.equals(55, score.compute({ intent = "buy", zone = "Palma", budget = 600000 }, cfg.lead_score))
    assert.equals(40, score.compute({ intent = "rent", budget = 2500, human = true }, cfg.lead_score))
    assert.equals(35, score.compute({ intent = "buy", visit = true }, cfg.lead_score))
    -- A free-text timing counts as known only.
    assert.equals(25, score.compute({ intent = "buy", timing = "en verano" }, cfg.lead_score))
  end)

  it("follows rules from the config", function()
    setup({ lead_score = { intent = { buy = 50 }, max = 60 } })
    assert.equals(60, score.compute({ intent = "buy", zone = "x", type = "y" }, cfg.lead_score))
  end)
end)
