-- Text helpers for the bot: accent- and case-insensitive folding, keyword matching at word
-- starts, template filling, UTF-8-safe truncation and number/date formatting.
local M = {}

-- Latin-1 supplement letters (two bytes, C3 xx) -> their plain lower-case letter.
local FOLD = {}
do
  local groups = {
    a = "ÀÁÂÃÄÅàáâãäå", c = "Çç", e = "ÈÉÊËèéêë", i = "ÌÍÎÏìíîï", n = "Ññ",
    o = "ÒÓÔÕÖØòóôõöø", u = "ÙÚÛÜùúûü", y = "Ýýÿ",
  }
  for plain, chars in pairs(groups) do
    for ch in chars:gmatch(utf8.charpattern) do FOLD[ch] = plain end
  end
end

-- Lower case without accents; everything that is not a letter or a digit becomes one space.
-- "¡Hola, ¿QUÉ tal? Ático en Sóller" -> "hola que tal atico en soller"
function M.fold(s)
  if type(s) ~= "string" then return "" end
  s = s:gsub("\xC3[\x80-\xBF]", FOLD):lower()
  s = s:gsub("[^%w]+", " ")
  return (s:gsub("^ +", ""):gsub(" +$", ""))
end

-- Lower case without accents, punctuation kept (for amounts such as "1.200.000 €").
function M.lower(s)
  if type(s) ~= "string" then return "" end
  return (s:gsub("\xC3[\x80-\xBF]", FOLD):lower())
end

local function escape(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- Position of folded word (or phrase) in folded text as a whole word, or nil; with prefix true
-- it only has to start a word ("compra" then matches "comprar").
function M.find_word(folded, word, prefix)
  return (folded:find("%f[%w]" .. escape(word) .. (prefix and "" or "%f[%W]")))
end

-- A keyword list entry from configured text: folded, and a trailing "*" makes it a prefix.
function M.keyword(raw)
  local prefix = raw:match("%*%s*$") ~= nil
  return { word = M.fold((raw:gsub("%*%s*$", ""))), prefix = prefix, label = raw }
end

-- The earliest of entries ({word = folded, ...}) found in folded text: the entry and its position.
function M.earliest(folded, entries)
  local best, at
  for _, e in ipairs(entries) do
    local p = M.find_word(folded, e.word, e.prefix)
    if p and (not at or p < at or (p == at and #e.word > #best.word)) then best, at = e, p end
  end
  return best, at
end

-- Replaces {name} placeholders with vars[name]; unknown ones stay as written, so a typo in a
-- configured text shows.
function M.fill(template, vars)
  return (template:gsub("{([%w_]+)}", function(k)
    local v = vars[k]
    if v == nil then return nil end
    return tostring(v)
  end))
end

-- At most n bytes of s, not cutting a UTF-8 sequence; "…" marks a cut.
function M.truncate(s, n)
  if #s <= n then return s end
  local cut = n - 3
  while cut > 0 and (s:byte(cut + 1) & 0xC0) == 0x80 do cut = cut - 1 end
  return s:sub(1, cut) .. "…"
end

-- Collapses whitespace and trims.
function M.squash(s)
  return (s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""))
end

-- How to address someone by their WhatsApp profile name: the first word when it looks like a
-- name ("María López" -> "María"), nil for names without letters (emoji, numbers).
function M.first_name(push_name)
  if type(push_name) ~= "string" then return nil end
  local first = push_name:match("^%s*(%S+)")
  if not first or #M.fold(first) == 0 or not M.fold(first):find("%a") then return nil end
  return first
end

-- 1234567 -> "1.234.567"
function M.thousands(n)
  local s = string.format("%d", math.floor(n + 0.5))
  local out = s:reverse():gsub("(%d%d%d)", "%1."):reverse()
  return (out:gsub("^%.", ""))
end

-- Epoch seconds -> "2026-01-05T08:00:00Z"
function M.iso(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

return M
