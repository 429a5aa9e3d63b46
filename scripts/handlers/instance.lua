-- connection.update and qrcode.updated: events without a contact, so wahook.state here is the
-- instance's (close alerts without flapping floods, one QR mail per interval).
local wahook = require "wahook"
local settings = require "settings"
local alerts = require "alerts"

local M = {}

function M.connection(ev)
  local msg = ev.msg
  if type(msg) ~= "table" then return end
  local inst = wahook.state.get()
  alerts.connection(inst, msg, settings.get(), wahook.now())
  wahook.state.set(inst)
  wahook.metric.inc("connection_updates", { state = msg.state or "unknown" })
end

function M.qrcode(ev)
  local msg = ev.msg
  if type(msg) ~= "table" then return end
  local inst = wahook.state.get()
  alerts.qrcode(inst, msg, settings.get(), wahook.now())
  wahook.state.set(inst)
end

return M
