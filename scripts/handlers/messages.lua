-- messages.upsert and send.message: who wrote, what is ignored, the CRM contact and activity,
-- and the bot. The ignore rules are the table IGNORE_CHATS and the checks in M.upsert.
local wahook = require "wahook"
local settings = require "settings"
local engine = require "bot.engine"
local crm = require "crm_ops"

local M = {}

-- Chats that are never a customer conversation (ev.msg.chat_kind).
M.IGNORE_CHATS = { group = true, status = true, broadcast = true, newsletter = true, other = true }

-- Message types the bot and the CRM leave alone: a reaction is not something to answer.
M.IGNORE_TYPES = { reaction = true }

local function ignored(reason)
  wahook.metric.inc("messages_ignored", { reason = reason })
end

function M.blacklisted(cfg, ev, msg)
  local bl = cfg.blacklist
  local key = engine.contact_key(ev, msg)
  return (msg.phone and bl[msg.phone]) or (msg.lid and bl[msg.lid]) or (key and bl[key]) or false
end

-- A message written by someone of the business (phone or another API client), not by wahook.
local function from_business(ev, msg, cfg, now)
  if msg.origin == "wahook" then return ignored("own") end
  local st = wahook.state.get()
  engine.business(st, ev, msg, cfg, now)
  wahook.state.set(st)
end

function M.upsert(ev)
  local msg = ev.msg
  if type(msg) ~= "table" or msg.kind ~= "message" then
    wahook.log.warn("messages.upsert without a normalised message; skipped", { event_id = ev.id })
    return
  end
  if M.IGNORE_CHATS[msg.chat_kind or "other"] then return ignored(msg.chat_kind or "other") end
  local cfg = settings.get()
  local now = wahook.now()
  if msg.from_me then return from_business(ev, msg, cfg, now) end
  local phone = engine.contact_key(ev, msg)
  if not phone then return ignored("no_contact") end
  if M.blacklisted(cfg, ev, msg) then return ignored("blacklist") end
  if M.IGNORE_TYPES[msg.type or ""] then return ignored(msg.type) end

  local label = cfg.texts.media_label[msg.type or "unknown"] or ""
  crm.contact(phone, msg.push_name, msg.text or label, msg.timestamp or now)
  local st = wahook.state.get()
  engine.inbound(st, ev, msg, cfg, now)
  wahook.state.set(st)
  wahook.metric.inc("messages_received", { type = msg.type or "unknown" })
end

-- send.message: wahook's own sends are tracked natively; one from another API client is a
-- person of the business writing.
function M.sent(ev)
  local msg = ev.msg
  if type(msg) ~= "table" or msg.kind ~= "message" or msg.chat_kind ~= "direct" then return end
  if msg.origin == "wahook" then return end
  from_business(ev, msg, settings.get(), wahook.now())
end

return M
