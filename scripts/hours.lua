-- Business hours: a weekly schedule of opening intervals in one time zone, with holidays
-- (settings.hours, from wahook.scripts.config.hours). Local times come from the runtime's
-- time-zone code (wahook.localtime / wahook.mktime), so DST changes are handled by the zone
-- rules, never by adding hours.
--
--   hours.is_open(h, t)         -> true/false for epoch seconds t
--   hours.next_open(h, t)       -> the epoch second the business next opens (t itself when
--                                  open), or nil when the schedule never opens
--   hours.describe(h, at, now, texts) -> "hoy a las 16:00", "mañana a las 09:00", ...
local wahook = require "wahook"

local M = {}

local SEARCH_DAYS = 400 -- a year of holidays cannot hide every opening

local function date_keys(lt)
  return string.format("%04d-%02d-%02d", lt.year, lt.month, lt.day),
         string.format("%02d-%02d", lt.month, lt.day)
end

function M.is_holiday(h, lt)
  local full, yearly = date_keys(lt)
  return h.holidays[full] == true or h.holidays[yearly] == true
end

function M.is_open(h, t)
  local lt = wahook.localtime(h.timezone, math.floor(t))
  if M.is_holiday(h, lt) then return false end
  local m = lt.hour * 60 + lt.min
  for _, span in ipairs(h.days[lt.wday]) do
    if m >= span[1] and m < span[2] then return true end
  end
  return false
end

function M.next_open(h, t)
  t = math.floor(t)
  if M.is_open(h, t) then return t end
  local today = wahook.localtime(h.timezone, t)
  for d = 0, SEARCH_DAYS do
    -- Noon of the day d days ahead: never inside a DST gap, so the date is exact.
    local noon = wahook.mktime(h.timezone, { year = today.year, month = today.month,
                                             day = today.day + d, hour = 12 })
    local lt = wahook.localtime(h.timezone, noon)
    if not M.is_holiday(h, lt) then
      for _, span in ipairs(h.days[lt.wday]) do
        local start = wahook.mktime(h.timezone, { year = lt.year, month = lt.month, day = lt.day,
                                                  hour = span[1] // 60, min = span[1] % 60 })
        if start > t then return start end
      end
    end
  end
  return nil
end

-- How a customer reads an opening time, relative to now, in the business's zone.
function M.describe(h, at, now, texts)
  local text = require "bot.text"
  if not at then return texts.out_of_hours_unknown end
  local a = wahook.localtime(h.timezone, math.floor(at))
  local n = wahook.localtime(h.timezone, math.floor(now))
  local time = string.format("%02d:%02d", a.hour, a.min)
  -- Whole local days between the two dates, through their noons.
  local function day_number(lt)
    return wahook.mktime("UTC", { year = lt.year, month = lt.month, day = lt.day }) // 86400
  end
  local days = day_number(a) - day_number(n)
  local vars = { time = time, weekday = texts.weekdays[a.wday], day = a.day, month = a.month }
  if days <= 0 then return text.fill(texts.next_open_today, vars) end
  if days == 1 then return text.fill(texts.next_open_tomorrow, vars) end
  if days < 7 then return text.fill(texts.next_open_weekday, vars) end
  return text.fill(texts.next_open_date, vars)
end

return M
