-- presence.update: the contact's last presence (composing, recording, available, ...), which
-- lets the bot wait while the customer is still typing.
local wahook = require "wahook"
local settings = require "settings"
local engine = require "bot.engine"

local M = {}

function M.update(ev)
  local msg = ev.msg
  if type(msg) ~= "table" or msg.chat_kind ~= "direct" or not msg.presence
     or not engine.contact_key(ev, msg) then
    return
  end
  local st = wahook.state.get()
  engine.presence(st, msg, settings.get(), wahook.now())
  wahook.state.set(st)
end

return M
