-- A small stand-in for the runtime around scripts/main.lua, for conversation specs: it keeps
-- each contact's (and instance's) state between events, fires durable timers when the clock
-- passes them, normalises bodies with the real lib/normalize.lua, sets ev.contact and
-- ev.msg.origin the way runtime/process.c does, and collects what the handlers queued.
--
--   local Sim = require "spec.support.sim"
--   local sim = Sim.new{ now = TUESDAY_10H, config = {...} }
--   sim:text("34600111222", "Hola, quiero comprar un piso")
--   sim:advance(5)                 -- the debounce timer fires
--   sim:replies("34600111222")     -- texts sent to that contact
--   sim:crm("lead_score")          -- fields of the queued crm operations
local cjson = require "cjson"
local fake = require("spec.support.wahook_fake")._install()
local normalize = require "lib.normalize"

local Sim = {}
Sim.__index = Sim

Sim.INSTANCE = "acme-bot"

-- cjson gives floats for every number; the runtime gives integers for integral JSON numbers.
local function ints(v)
  if type(v) == "number" then return math.tointeger(v) or v end
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = ints(x) end
  return out
end
Sim.ints = ints

function Sim.handlers()
  package.loaded.main = nil
  fake._reset{ phase = "load" }
  local h = require "main"
  fake._reset()
  return h
end

function Sim.new(opts)
  opts = opts or {}
  local self = setmetatable({
    now = opts.now or 1761141807,
    config = opts.config or {},
    echo = opts.echo ~= false, -- deliver our sends and feed back their send.message echo
    states = {},
    timers = {},
    actions = {},
    facts = {},
    metrics = {},
    logs = {},
    runs = 0,
    seq = 0,
    own_ids = {},
    alias = {},
  }, Sim)
  self.h = Sim.handlers()
  return self
end

local function key(instance, contact)
  return (instance or "?") .. "\31" .. (contact or "")
end

function Sim:next_id(prefix)
  self.seq = self.seq + 1
  return string.format("%s%018X", prefix or "A5F3", self.seq)
end

-- Runs handlers[name] (or "*") on ev with the state of (instance, contact) and applies the
-- outcome like a commit. Returns the outcome.
function Sim:run(name, ev, contact)
  local k = key(ev.instance, contact)
  fake._reset{ state = self.states[k], now = self.now, config = self.config }
  local h = self.h[name] or self.h["*"]
  if h then h(ev) end
  local out = fake._outcome()
  self.runs = self.runs + 1
  if out.state.change == "set" then
    self.states[k] = out.state.value
  elseif out.state.change == "cleared" then
    self.states[k] = nil
  end
  self.timers[k] = self.timers[k] or {}
  for _, n in ipairs(out.cancelled) do self.timers[k][n] = nil end
  for _, t in ipairs(out.timers) do
    self.timers[k][t.name] = { due_at = t.due_at, payload = t.payload, instance = ev.instance,
                               contact = contact }
  end
  for _, a in ipairs(out.actions) do
    a.contact, a.at = contact, self.now
    self.actions[#self.actions + 1] = a
  end
  for _, f in ipairs(out.facts) do
    f.contact = contact
    self.facts[#self.facts + 1] = f
  end
  for _, m in ipairs(out.metrics) do self.metrics[#self.metrics + 1] = m end
  for _, l in ipairs(fake._logs()) do self.logs[#self.logs + 1] = l end
  if self.echo then
    for _, a in ipairs(out.actions) do
      if a.type == "send_text" then self:echo_send(a) end
    end
  end
  return out
end

-- The send.message Evolution emits for a text wahook sent (origin "wahook" once the deliverer
-- recorded its id).
function Sim:echo_send(a)
  local id = self:next_id("3EB0")
  self.own_ids[id] = true
  local jid = a.to:find("@", 1, true) and a.to or a.to .. "@s.whatsapp.net"
  self:event({
    event = "send.message", instance = Sim.INSTANCE,
    data = { key = { remoteJid = jid, fromMe = true, id = id }, pushName = "Você",
             status = "PENDING", message = { conversation = a.text }, messageType = "conversation",
             messageTimestamp = math.floor(self.now), source = "web" },
  })
end

-- One webhook body through normalisation and the handlers, as runtime/process.c does it.
function Sim:event(body)
  local ev = ints(body)
  self.seq = self.seq + 1
  ev.id = self.seq
  ev.received_at = math.floor(self.now * 1000)
  ev.attempt = 1
  local msg = normalize.event(ev)
  local contact
  if msg then
    if msg.phone and msg.lid then self.alias[msg.lid] = msg.phone end
    contact = msg.phone or (msg.lid and self.alias[msg.lid]) or msg.lid
    if msg.kind == "message" then
      if not msg.from_me then
        msg.origin = "contact"
      elseif msg.id and self.own_ids[msg.id] then
        msg.origin = "wahook"
      else
        msg.origin = ev.event == "send.message" and "api" or "phone"
      end
    end
    ev.msg = msg
  end
  ev.contact = contact or cjson.null
  return self:run(ev.event, ev, contact)
end

-- Moves the clock by seconds, firing every timer that falls due on the way, in order.
function Sim:advance(seconds)
  local target = self.now + seconds
  for _ = 1, 1000 do
    local best, bk, bn
    for k, list in pairs(self.timers) do
      for n, t in pairs(list) do
        if t.due_at <= math.floor(target * 1000 + 0.5) and (not best or t.due_at < best.due_at) then
          best, bk, bn = t, k, n
        end
      end
    end
    if not best then break end
    self.timers[bk][bn] = nil
    self.now = math.max(self.now, best.due_at / 1000)
    self:run("timer", {
      event = "timer", timer = bn, instance = best.instance, id = self.seq, due_at = best.due_at,
      contact = best.contact or cjson.null, payload = best.payload or cjson.null, attempt = 1,
    }, best.contact)
  end
  self.now = target
end

-- ---- bodies ---------------------------------------------------------------------------------

-- A text from a customer (messages.upsert), shaped like fixtures/evolution/messages-upsert-text.
function Sim:text(phone, text, opts)
  opts = opts or {}
  local body = {
    event = "messages.upsert", instance = Sim.INSTANCE,
    data = {
      key = { remoteJid = phone .. "@s.whatsapp.net", fromMe = false, id = self:next_id(),
              participant = "", addressingMode = "pn" },
      pushName = opts.name == nil and "María López" or opts.name or nil,
      status = "DELIVERY_ACK",
      message = opts.message or { conversation = text },
      messageType = opts.type or "conversation",
      messageTimestamp = opts.ts or math.floor(self.now),
      source = "android",
    },
  }
  if opts.name == false then body.data.pushName = nil end
  return self:event(body)
end

-- A message typed on the business phone (messages.upsert, fromMe).
function Sim:business(phone, text, opts)
  opts = opts or {}
  return self:event({
    event = "messages.upsert", instance = Sim.INSTANCE,
    data = { key = { remoteJid = phone .. "@s.whatsapp.net", fromMe = true, id = self:next_id("B7E2") },
             pushName = "Acme Store", status = "SERVER_ACK", message = { conversation = text },
             messageType = "conversation", messageTimestamp = opts.ts or math.floor(self.now),
             source = "android" },
  })
end

-- A text sent through Evolution's API by another client (send.message, not wahook's id).
function Sim:api(phone, text)
  return self:event({
    event = "send.message", instance = Sim.INSTANCE,
    data = { key = { remoteJid = phone .. "@s.whatsapp.net", fromMe = true, id = self:next_id("3EB0") },
             pushName = "Você", status = "PENDING", message = { conversation = text },
             messageType = "conversation", messageTimestamp = math.floor(self.now), source = "web" },
  })
end

function Sim:presence(phone, presence)
  local jid = phone .. "@s.whatsapp.net"
  return self:event({ event = "presence.update", instance = Sim.INSTANCE,
                      data = { id = jid, presences = { [jid] = { lastKnownPresence = presence } } } })
end

-- ---- what came out --------------------------------------------------------------------------

-- Actions of type (and, for crm, op) queued since the start or since the last take().
function Sim:take()
  local out = self.actions
  self.actions = {}
  self.facts_taken = self.facts
  self.facts = {}
  return out
end

function Sim:replies(phone)
  local out = {}
  for _, a in ipairs(self.actions) do
    if a.type == "send_text" and (not phone or a.to == phone) then out[#out + 1] = a.text end
  end
  return out
end

function Sim:sends()
  local out = {}
  for _, a in ipairs(self.actions) do
    if a.type == "send_text" then out[#out + 1] = a end
  end
  return out
end

function Sim:crm(op)
  local out = {}
  for _, a in ipairs(self.actions) do
    if a.type == "crm" and (not op or a.op == op) then out[#out + 1] = a.fields end
  end
  return out
end

function Sim:activities(kind)
  local out = {}
  for _, f in ipairs(self:crm("activity")) do
    if not kind or f.kind == kind then out[#out + 1] = f end
  end
  return out
end

function Sim:alerts(kind)
  local out = {}
  for _, a in ipairs(self.actions) do
    if a.type == "alert" and (not kind or a.kind == kind) then out[#out + 1] = a end
  end
  return out
end

function Sim:mails()
  local out = {}
  for _, a in ipairs(self.actions) do
    if a.type == "mail" then out[#out + 1] = a end
  end
  return out
end

function Sim:recorded(kind)
  local out = {}
  for _, f in ipairs(self.facts) do
    if not kind or f.kind == kind then out[#out + 1] = f.fields end
  end
  return out
end

function Sim:metric(name, labels)
  local n = 0
  for _, m in ipairs(self.metrics) do
    local ok = m.name == name
    for k, v in pairs(labels or {}) do ok = ok and m.labels[k] == v end
    if ok then n = n + m.value end
  end
  return n
end

function Sim:state(phone)
  return self.states[key(Sim.INSTANCE, phone)]
end

function Sim:instance_state()
  return self.states[key(Sim.INSTANCE, nil)]
end

function Sim:timer(phone, name)
  local t = self.timers[key(Sim.INSTANCE, phone)]
  return t and t[name]
end

return Sim
