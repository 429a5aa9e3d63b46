-- The conversation itself: a small state machine per contact, free of effects (it returns the
-- lines to send and whether to hand over; bot/engine.lua does the sending). Which questions a
-- flow asks is wahook.scripts.config.flows; their wording is texts.questions.
--
-- conv (kept in the contact's state):
--   greeted    the greeting went out in this conversation
--   intent     the flow being followed: buy | rent | sell | visit | (an operator's own)
--   asking     the slot asked last (zone | type | budget | timing), answered by the next message
--   tries      {slot = n}: answers that did not fill the slot; after 2 it is skipped
--   skipped    {slot = true}
--   misses     messages in a row the bot understood nothing of
--   stage      engaged | qualified | handoff
-- lead (kept across conversations until one closes): zone, type, budget, timing, visit, human,
-- intent.
local text = require "bot.text"

local M = {}

M.MAX_TRIES = 2

-- Takes what was heard into the lead and picks the flow. Returns the chosen intent when it
-- changed.
function M.absorb(conv, lead, heard, cfg)
  for _, slot in ipairs({ "zone", "type", "budget", "timing" }) do
    if heard[slot] ~= nil then lead[slot] = heard[slot] end
  end
  if heard.intents.visit then lead.visit = true end
  if heard.intents.human then lead.human = true end
  local chosen
  for _, name in ipairs(cfg.flow_priority) do
    if heard.intents[name] then
      chosen = name
      break
    end
  end
  -- A visit does not replace buying or renting: it is something more the lead wants.
  if chosen and chosen ~= conv.intent and not (chosen == "visit" and conv.intent) then
    conv.intent = chosen
    lead.intent = chosen
    conv.misses = 0
    return chosen
  end
  return nil
end

-- The slot to ask next in the conversation's flow, or nil when the lead is complete.
function M.next_slot(conv, lead, cfg)
  local flow = conv.intent and cfg.flows[conv.intent]
  if not flow then return nil end
  for _, slot in ipairs(flow) do
    if lead[slot] == nil and not (conv.skipped and conv.skipped[slot]) then return slot end
  end
  return nil
end

function M.question(conv, slot, cfg)
  local by = cfg.texts.questions_by_intent[conv.intent or ""]
  return (by and by[slot]) or cfg.texts.questions[slot]
end

local function money(n)
  return text.thousands(n) .. " €"
end

-- The lead as "• Label: value" lines.
function M.summary(lead, cfg)
  local t = cfg.texts
  local lines = {}
  local function add(key, value)
    if value ~= nil then
      lines[#lines + 1] = text.fill(t.summary_line, { label = t.labels[key] or key, value = value })
    end
  end
  add("intent", lead.intent and (t.intent_names[lead.intent] or lead.intent))
  add("zone", lead.zone)
  add("type", lead.type)
  add("budget", lead.budget and money(lead.budget))
  add("timing", lead.timing and (t.timing_names[lead.timing] or lead.timing))
  if lead.visit and lead.intent ~= "visit" then add("visit", t.visit_yes) end
  if #lines == 0 then return t.not_given end
  return table.concat(lines, "\n")
end

-- One step: what the bot says to the batch of messages heard. ctx: {cfg, name, returning,
-- has_text, has_audio}. Returns {lines = {...}, handoff = reason | nil}; updates conv and lead.
function M.step(conv, lead, heard, ctx)
  local cfg, t = ctx.cfg, ctx.cfg.texts
  local lines, out = {}, {}
  out.lines = lines
  local vars = { name = ctx.name, agency = cfg.agency }

  if not conv.greeted then
    local key = ctx.returning and "greeting_again" or "greeting"
    if not ctx.name then key = key .. "_no_name" end
    lines[#lines + 1] = text.fill(t[key], vars)
    conv.greeted = true
  end

  local asked = conv.asking
  M.absorb(conv, lead, heard, cfg)
  if asked and lead[asked] == nil then
    conv.tries = conv.tries or {}
    conv.tries[asked] = (conv.tries[asked] or 0) + 1
    if conv.tries[asked] >= M.MAX_TRIES then
      conv.skipped = conv.skipped or {}
      conv.skipped[asked] = true
    end
  end

  if heard.intents.human then
    lines[#lines + 1] = t.handoff
    out.handoff = "requested"
    conv.asking = nil
    return out
  end
  if heard.intents.prices then lines[#lines + 1] = t.prices end
  if ctx.has_audio and not ctx.has_text then lines[#lines + 1] = t.audio end

  if conv.intent then
    conv.stage = "engaged"
    local slot = M.next_slot(conv, lead, cfg)
    if slot then
      lines[#lines + 1] = M.question(conv, slot, cfg)
      conv.asking = slot
    else
      conv.asking = nil
      conv.stage = "qualified"
      lines[#lines + 1] = text.fill(ctx.name and t.summary or t.summary_no_name,
                                    { name = ctx.name, summary = M.summary(lead, cfg) })
      out.handoff = "qualified"
    end
    return out
  end

  -- No flow yet: a greeting, prices or an audio note already said something useful.
  local understood = heard.intents.prices or heard.zone or heard.type or heard.budget or heard.timing
  if #lines > 0 or understood or not ctx.has_text then
    if not heard.intents.prices and not (ctx.has_audio and not ctx.has_text) then
      lines[#lines + 1] = t.menu
    end
    return out
  end
  conv.misses = (conv.misses or 0) + 1
  if conv.misses >= cfg.bot.max_not_understood then
    lines[#lines + 1] = t.handoff
    out.handoff = "not_understood"
    return out
  end
  lines[#lines + 1] = t.not_understood
  return out
end

return M
