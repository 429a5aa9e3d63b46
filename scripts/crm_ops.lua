-- Every CRM operation the event handlers queue, with its fields, in one place. The deliverers'
-- CRM mapping turns each into the CRM's own API calls after the event commits; a handler never
-- waits for the CRM.
--
--   contact_upsert  {phone, name?, last_message, last_message_at}
--   activity        {phone, kind, text, fields}   kinds: message_received, handoff, csat
--   lead_score      {phone, score}
--   task            {phone, title, body, due_at}
--
-- phone is the contact key: E.164 digits without "+" ("34600111222"), or "<digits>@lid" while
-- WhatsApp hides the number. Times are ISO 8601 in UTC ("2026-01-05T08:00:00Z").
local wahook = require "wahook"
local text = require "bot.text"

local M = {}

local MAX_TEXT = 1000

function M.contact(phone, name, last_message, at)
  wahook.crm("contact_upsert", {
    phone = phone,
    name = name,
    last_message = text.truncate(last_message, MAX_TEXT),
    last_message_at = text.iso(at),
  })
end

-- m: a buffered message {id, text, type}; answered: whether the bot replied to it; reason why
-- not (takeover, handoff, out_of_hours, old, loop, auto_reply, disabled, rate...).
function M.message_received(phone, m, answered, reason)
  wahook.crm("activity", {
    phone = phone,
    kind = "message_received",
    text = text.truncate(m.text ~= "" and m.text or m.label or "", MAX_TEXT),
    fields = { message_id = m.id, type = m.type, bot_answered = answered, reason = reason },
  })
end

function M.handoff(phone, reason, summary)
  wahook.crm("activity", {
    phone = phone, kind = "handoff", text = text.truncate(summary, MAX_TEXT),
    fields = { reason = reason },
  })
end

function M.csat(phone, score)
  wahook.crm("activity", {
    phone = phone, kind = "csat", text = string.format("CSAT %d/5", score),
    fields = { score = score },
  })
end

function M.lead_score(phone, score)
  wahook.crm("lead_score", { phone = phone, score = score })
end

function M.task(phone, title, body, due_at)
  wahook.crm("task", { phone = phone, title = title, body = text.truncate(body, 2000),
                       due_at = text.iso(due_at) })
end

return M
