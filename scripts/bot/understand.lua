-- What a customer's text says, as far as keywords and simple patterns tell: intents (buy, rent,
-- sell, visit, human, prices, and any an operator adds under intents), and the lead's slots
-- (zone, property type, budget, timing). Accent- and case-insensitive; every word list is in
-- wahook.scripts.config.
--
--   local heard = understand.text("Busco un ático en Sóller, unos 800.000€", cfg)
--   --> {intents = {buy = true}, type = "ático", zone = "Sóller", budget = 800000, ...}
local text = require "bot.text"

local M = {}

-- Words after a number that make it something other than money.
local NOT_MONEY = {
  mes = true, meses = true, ano = true, anos = true, semana = true, semanas = true, dia = true,
  dias = true, hab = true, habitacion = true, habitaciones = true, dormitorio = true,
  dormitorios = true, bano = true, banos = true, m = true, m2 = true, metros = true,
  personas = true, plantas = true, planta = true, minutos = true, horas = true, hijos = true,
}

-- "m" alone is metres; millions need "m€", "mill", "millones"...
local MULTIPLIERS = { k = 1000, mil = 1000, millon = 1000000, millones = 1000000,
                      mill = 1000000, mm = 1000000 }
local CURRENCY = { eur = true, euro = true, euros = true }

-- "1.200.000" / "1,5" / "450000" -> a number (dots or commas as thousands separators when
-- followed by exactly three digits, else as the decimal mark).
local function parse_number(s)
  if s:match("^%d+$") then return tonumber(s) end
  if s:match("^%d%d?%d?[%.,]%d%d%d$") or s:match("^%d%d?%d?([%.,])%d%d%d%1%d%d%d$")
     or s:match("^%d%d?%d?([%.,])%d%d%d%1%d%d%d%1%d%d%d$") then
    return tonumber((s:gsub("[%.,]", "")))
  end
  local int, frac = s:match("^(%d+)[%.,](%d+)$")
  if int then return tonumber(int .. "." .. frac) end
  return nil
end

-- The amount of money in s (lower-cased), in euros, or nil. A bare number counts only when
-- asked is true (the bot just asked for the budget) or it is at least 1000.
function M.budget(s, asked)
  s = text.lower(s):gsub("(%d)[ \t]+(%d%d%d)%f[%D]", "%1%2") -- "450 000" -> "450000"
  local best
  for num, word, after in s:gmatch("(%d[%d%.,]*)%s*([%a\xE2\x82\xAC]*)()") do
    num = num:gsub("[%.,]+$", "")
    local n = parse_number(num)
    local euro = word:find("\xE2\x82\xAC", 1, true) ~= nil
    local unit = word:match("^%a+") or ""
    if unit == "m" and euro then unit = "mill" end
    local mult = MULTIPLIERS[unit]
    -- "1200 al mes", "900 mensuales": a rent.
    local monthly = (unit == "al" and s:find("^%s*mes", after)) or unit == "mensuales"
                    or unit == "mensual"
    local money = euro or CURRENCY[unit] or mult ~= nil or monthly
    if n and mult then n = n * mult end
    if n and not money then
      -- A bare number: not when a unit says otherwise, not a phone number, and only when the
      -- bot asked for the budget or it is clearly an amount.
      if NOT_MONEY[unit] or (num:match("^%d+$") and #num >= 9) or not (asked or n >= 10000) then
        n = nil
      end
    end
    if n and n > 0 and (not best or n > best) then best = n end
  end
  if best then return math.floor(best + 0.5) end
  return nil
end

-- Intents found in folded text: a set {name = true}.
function M.intents(folded, intents)
  local found = {}
  for name, spec in pairs(intents) do
    for _, kw in ipairs(spec.keywords) do
      if text.find_word(folded, kw.word, kw.prefix) then found[name] = true break end
    end
    if not found[name] then
      for _, p in ipairs(spec.patterns) do
        if folded:find(p) then found[name] = true break end
      end
    end
  end
  return found
end

-- A CSAT score 1..5 in a short answer ("4", "un 5", "4/5", "⭐⭐⭐⭐"), or nil.
local NUMBER_WORDS = { uno = 1, una = 1, dos = 2, tres = 3, cuatro = 4, cinco = 5 }
function M.csat(raw)
  if type(raw) ~= "string" then return nil end
  local stars = select(2, raw:gsub("\xE2\xAD\x90", ""))
  if stars >= 1 and stars <= 5 and not raw:find("%d") then return stars end
  local f = text.fold(raw)
  if #f > 20 then return nil end
  local n = f:match("^(%d)$") or f:match("^un (%d)$") or f:match("^(%d) de 5$")
            or f:match("^(%d) 5$") or f:match("^(%d) estrellas?$") or f:match("^un (%d) de 5$")
  n = tonumber(n) or NUMBER_WORDS[f] or NUMBER_WORDS[f:match("^un (%a+)$") or ""]
  if n and n >= 1 and n <= 5 then return math.tointeger(n) end
  return nil
end

-- Everything the text says. asking is the slot the bot asked for last (or nil): a free answer
-- fills it when no keyword does.
function M.text(raw, cfg, asking)
  local folded = text.fold(raw)
  local heard = { folded = folded, intents = M.intents(folded, cfg.intents) }
  local zone = text.earliest(folded, cfg.zones)
  heard.zone = zone and zone.label
  local ptype = text.earliest(folded, M.flatten(cfg.property_types))
  heard.type = ptype and ptype.name
  local timing = text.earliest(folded, M.flatten(cfg.timings))
  heard.timing = timing and timing.name
  heard.budget = M.budget(raw, asking == "budget")
  -- A free answer to the question just asked: "Por el centro" for the zone, and so on. Not for
  -- the budget (a number is needed) and not when the text is a request of its own.
  local free = text.truncate(text.squash(raw), 80)
  if asking and not heard[asking] and asking ~= "budget" and free ~= ""
     and next(heard.intents) == nil then
    heard[asking] = free
    heard.free = asking
  end
  return heard
end

-- {{name, words = {...}}, ...} -> a flat list of {word, name} for text.earliest.
local flat_cache = setmetatable({}, { __mode = "k" })
function M.flatten(groups)
  local cached = flat_cache[groups]
  if cached then return cached end
  local out = {}
  for _, g in ipairs(groups) do
    for _, w in ipairs(g.words) do out[#out + 1] = { word = w.word, prefix = w.prefix, name = g.name } end
  end
  flat_cache[groups] = out
  return out
end

return M
