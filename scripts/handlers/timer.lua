-- Durable timers (wahook.after) come back here as ev.timer with the contact's state.
local wahook = require "wahook"
local settings = require "settings"
local engine = require "bot.engine"

local M = {}

M.BY_NAME = {
  [engine.TIMER_DEBOUNCE] = engine.flush,
  [engine.TIMER_CSAT] = engine.csat_due,
}

function M.fire(ev)
  local run = M.BY_NAME[ev.timer]
  if not run then
    wahook.log.warn("unknown timer; ignored", { timer = tostring(ev.timer) })
    return
  end
  local st = wahook.state.get()
  run(st, ev, settings.get(), wahook.now())
  wahook.state.set(st)
end

return M
