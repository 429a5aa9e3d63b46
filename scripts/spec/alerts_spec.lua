-- Specs for the instance events (connection.update, qrcode.updated) and scripts/alerts.lua:
-- reasons in words, no flood while a connection flaps, the reconnection notice, one QR e-mail
-- per interval with the PNG attached, and the QR-limit alert from either of its two events.
local Sim = require "spec.support.sim"
local fixtures = require "spec.support.fixtures"

local T0 = 1768294800
local ADMIN = "admin@example.com"

local function connection(sim, state, code, extra)
  local data = { instance = Sim.INSTANCE, state = state, statusReason = code }
  for k, v in pairs(extra or {}) do data[k] = v end
  return sim:event({ event = "connection.update", instance = Sim.INSTANCE, data = data })
end

local function open(sim)
  return connection(sim, "open", 200, { wuid = "34600999888@s.whatsapp.net", profileName = "Acme Store" })
end

describe("connection alerts", function()
  it("name the reason in words", function()
    local cases = {
      { 401, "la sesión se cerró desde el teléfono" }, { 403, "WhatsApp ha denegado el acceso" },
      { 402, "WhatsApp ha bloqueado el número temporalmente" }, { 406, "WhatsApp ha bloqueado el número" },
      { 515, "hay que reiniciar la instancia" }, { 999, "motivo desconocido" },
    }
    for _, c in ipairs(cases) do
      local sim = Sim.new{ now = T0 }
      connection(sim, "close", c[1])
      local a = sim:alerts("connection_closed")
      assert.equals(1, #a)
      assert.equals(("WhatsApp desconectado en la instancia acme-bot: %s (código %d)."):format(c[2], c[1]), a[1].text)
    end
  end)

  it("do not flood while the connection flaps, and say how many were held back", function()
    local sim = Sim.new{ now = T0 }
    connection(sim, "close", 401)
    for _ = 1, 5 do
      sim:advance(60)
      open(sim)
      sim:advance(60)
      connection(sim, "close", 401)
    end
    -- One close alert and one reconnection notice in the cooldown.
    assert.equals(1, #sim:alerts("connection_closed"))
    assert.equals(1, #sim:alerts("connection_restored"))
    assert.equals("WhatsApp conectado de nuevo en la instancia acme-bot (+34600999888).",
                  sim:alerts("connection_restored")[1].text)
    assert.equals(5, sim:instance_state().closes_suppressed)
    -- After the cooldown the next close is alerted again, with the count.
    sim:advance(15 * 60)
    sim:take()
    connection(sim, "close", 406)
    local a = sim:alerts("connection_closed")
    assert.equals(1, #a)
    assert.equals("WhatsApp desconectado en la instancia acme-bot: WhatsApp ha bloqueado el número (código 406). "
                  .. "(5 desconexiones más sin avisar desde la última alerta)", a[1].text)
    assert.equals(5, a[1].fields.suppressed)
  end)

  it("an open without an alerted close is only logged", function()
    local sim = Sim.new{ now = T0 }
    open(sim)
    open(sim)
    assert.same({}, sim:alerts())
    assert.equals("WhatsApp connected", sim.logs[#sim.logs].msg)
  end)

  it("follow the configured cooldown", function()
    local sim = Sim.new{ now = T0, config = { alerts = { connection_cooldown = "1m" } } }
    connection(sim, "close", 401)
    sim:advance(61)
    connection(sim, "close", 401)
    assert.equals(2, #sim:alerts("connection_closed"))
  end)
end)

describe("QR codes", function()
  local qr = fixtures.evolution("qrcode-updated.json")

  it("are mailed to the admins as a PNG at most once per interval", function()
    local sim = Sim.new{ now = T0, config = { admin_email = { ADMIN, "it@example.com" } } }
    for _ = 1, 10 do
      sim:event(qr)
      sim:advance(20) -- Evolution rotates the code about every 20 s
    end
    local m = sim:mails()
    assert.equals(1, #m)
    assert.same({ ADMIN, "it@example.com" }, m[1].to)
    assert.truthy(m[1].body:find("como mucho uno cada 10 minutos", 1, true))
    assert.equals("image/png", m[1].attachments[1].content_type)
    sim:advance(10 * 60)
    sim:event(qr)
    assert.equals(2, #sim:mails())
  end)

  it("mention the pairing code when there is one", function()
    local sim = Sim.new{ now = T0, config = { admin_email = ADMIN } }
    local body = Sim.ints(qr)
    body.data.qrcode.pairingCode = "WZYEH1YY"
    sim:event(body)
    assert.truthy(sim:mails()[1].body:find("También puedes vincularlo con el código WZYEH1YY.", 1, true))
  end)

  it("are only logged without an admin address", function()
    local sim = Sim.new{ now = T0 }
    sim:event(qr)
    assert.same({}, sim.actions)
    assert.equals("warn", sim.logs[#sim.logs].level)
  end)

  it("the limit alerts the team once, from either event", function()
    local sim = Sim.new{ now = T0, config = { admin_email = ADMIN } }
    sim:event({ event = "qrcode.updated", instance = Sim.INSTANCE,
                data = { message = "QR code limit reached, please login again", statusCode = 500 } })
    connection(sim, "refused", 428, { wuid = "34600999888@s.whatsapp.net" })
    local a = sim:alerts("qr_limit")
    assert.equals(1, #a)
    assert.equals("La instancia acme-bot ha agotado los códigos QR sin vincular el teléfono: hay que volver a "
                  .. "conectarla desde Evolution API.", a[1].text)
    assert.same({}, sim:mails())
    assert.same({}, sim:alerts("connection_closed"))
  end)
end)
