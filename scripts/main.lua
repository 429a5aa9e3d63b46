-- The handler table wahook calls for every stored event: keys are event names, "timer" is
-- for wahook.after timers. A handler gets `ev` (the envelope, the decoded `data`, the
-- normalised view `ev.msg`, the contact key `ev.contact`) and queues actions through the wahook
-- module; it never touches the network itself.
--
-- Where to change what:
--   texts, hours, holidays, keywords, thresholds    conf/wahook.conf, wahook.scripts.config
--   a conversation flow                             bot/flow.lua (questions: flows in config)
--   the protections, debounce, handoff, CSAT        bot/engine.lua
--   business hours logic                            hours.lua
--   what the CRM is sent                            crm_ops.lua
--   team alerts and the QR mail                     alerts.lua
--   which messages are ignored                      handlers/messages.lua
--
-- Events without a handler here (messages.update, contacts, chats, ...) are stored, recorded
-- and counted by the runtime itself.
local settings = require "settings"
local messages = require "handlers.messages"
local instance = require "handlers.instance"
local presence = require "handlers.presence"
local timer = require "handlers.timer"

-- A bad wahook.scripts.config fails here, so a reload with it is refused with the reason.
settings.get()

return {
  ["messages.upsert"] = messages.upsert,
  ["send.message"] = messages.sent,
  ["connection.update"] = instance.connection,
  ["qrcode.updated"] = instance.qrcode,
  ["presence.update"] = presence.update,
  ["timer"] = timer.fire,
}
