-- The bot around the conversation: buffering and debounce on a durable timer, the protections
-- (takeover, loops, rate cap, stale messages), business hours, handoff, lead score and CSAT.
-- Every function takes the contact's state table st (the caller reads it with
-- wahook.state.get() and writes it back) and queues its effects through the wahook module.
--
-- st (per contact; see also bot/flow.lua for st.conv and st.lead):
--   key, to, name          contact key, where replies go, push name
--   pending, pending_since, debounce_due     messages waiting for the debounce timer
--   presence, presence_at  the contact's last presence and when it came
--   replies                times of the bot's replies in the last minute (rate cap)
--   recent, last_reply_at  the last replies (folded) and when the latest should arrive
--   fast, repeats, last_in loop detection counters
--   muted_until            silence after a loop with another bot
--   takeover_until         silence while a person of the business writes
--   conversations          conversations so far (a returning contact is greeted again)
--   csat_asked_at          when the satisfaction question went out
--   score, stage           the last lead score sent to the CRM and the recorded lead stage
local wahook = require "wahook"
local text = require "bot.text"
local understand = require "bot.understand"
local flow = require "bot.flow"
local score = require "bot.score"
local hours = require "hours"
local alerts = require "alerts"
local crm = require "crm_ops"

local M = {}

M.TIMER_DEBOUNCE = "debounce"
M.TIMER_CSAT = "csat"

local MAX_RECENT = 3
local TYPING = { composing = true, recording = true }

-- The contact key the runtime computed (ev.contact; JSON null for events without a contact).
function M.contact_key(ev, msg)
  if type(ev.contact) == "string" and ev.contact ~= "" then return ev.contact end
  return msg and (msg.phone or msg.lid) or nil
end

local function media_label(cfg, m)
  return cfg.texts.media_label[m.type or "unknown"] or cfg.texts.media_label.unknown or ""
end

-- The CRM activity of each message of a batch, with the bot's decision.
local function activities(st, batch, answered, reason)
  for _, m in ipairs(batch) do
    crm.message_received(st.key, m, answered, reason)
  end
end

local function silenced(st, now)
  if st.muted_until and st.muted_until > now then return "loop" end
  if st.takeover_until and st.takeover_until > now then return "takeover" end
  if st.conv and st.conv.stage == "handoff" then return "handoff" end
  return nil
end

-- (Re)arms the quiet-period timer after which a handed-over conversation counts as closed.
local function touch_quiet(st, cfg)
  local conv = st.conv
  if cfg.csat.enabled and conv and (conv.inbound or 0) > 0
     and (conv.stage == "handoff" or conv.human) then
    wahook.after(cfg.csat.quiet_after_handoff, M.TIMER_CSAT)
  end
end

local function arm_debounce(st, cfg, now, due)
  local limit = st.pending_since + cfg.bot.debounce_max
  if due > limit then due = limit end
  if due <= now then due = now + 0.001 end
  st.debounce_due = due
  wahook.after(due - now, M.TIMER_DEBOUNCE)
end

local function drop_pending(st, reason)
  if st.pending and #st.pending > 0 then
    activities(st, st.pending, false, reason)
    wahook.cancel(M.TIMER_DEBOUNCE)
  end
  st.pending, st.pending_since, st.debounce_due = nil, nil, nil
end

-- Sends text to the contact and remembers it for the rate cap and loop detection. in_reply_to
-- and since (the customer's message id and time) make it a recorded bot reply.
local function say(st, cfg, now, body, in_reply_to, since)
  local delay = math.tointeger(cfg.bot.typing_delay_ms) or 0
  wahook.send_text(st.to, body, delay > 0 and { delay = delay } or nil)
  st.replies = st.replies or {}
  st.replies[#st.replies + 1] = now
  st.last_reply_sent, st.last_reply_at = now, now + delay / 1000
  st.recent = st.recent or {}
  table.insert(st.recent, 1, text.truncate(text.fold(body), 200))
  while #st.recent > MAX_RECENT do table.remove(st.recent) end
  if in_reply_to then
    local latency = math.max(0, math.floor((now - (since or now)) * 1000))
    wahook.record("bot_reply", { in_reply_to = in_reply_to, latency_ms = latency })
  end
  wahook.metric.inc("bot_replies")
end

local function is_echo(st, folded)
  for _, r in ipairs(st.recent or {}) do
    if folded ~= "" and r == text.truncate(folded, 200) then return true end
  end
  return false
end

-- Sends the lead score when it changed and records lead changes.
local function update_lead(st, cfg)
  local lead = st.lead or {}
  local s = score.compute(lead, cfg.lead_score)
  local conv = st.conv
  local stage = "new"
  if lead.intent then stage = "engaged" end
  if conv and (conv.stage == "qualified" or conv.qualified) then stage = "qualified" end
  local changed = false
  if s ~= st.score and s > 0 then
    crm.lead_score(st.key, s)
    st.score = s
    changed = true
  end
  if changed or stage ~= st.stage then
    wahook.record("lead", { score = s, stage = stage })
    st.stage = stage
  end
end

local function handoff(st, cfg, now, reason)
  local conv = st.conv
  conv.stage = "handoff"
  conv.handoff_at = now
  conv.asking = nil
  if reason == "qualified" then conv.qualified = true end
  local summary = flow.summary(st.lead, cfg)
  alerts.handoff(cfg, { phone = st.key, name = st.name, score = score.compute(st.lead, cfg.lead_score),
                        reason = reason, summary = summary, intent = st.lead.intent })
  wahook.record("handoff", { reason = reason })
  crm.handoff(st.key, reason, summary)
  wahook.metric.inc("bot_handoffs", { reason = reason })
  touch_quiet(st, cfg)
end

-- Ends the conversation: the satisfaction question when the contact wrote in it, and a fresh
-- start (new lead) next time.
local function close(st, cfg, now, why)
  local conv = st.conv
  drop_pending(st, "closed")
  wahook.cancel(M.TIMER_CSAT)
  if conv and (conv.inbound or 0) > 0 and cfg.csat.enabled and st.to then
    say(st, cfg, now, cfg.texts.csat_question)
    st.csat_asked_at = now
  end
  st.conv, st.lead, st.takeover_until, st.score, st.stage = nil, {}, nil, nil, nil
  wahook.metric.inc("conversations_closed", { reason = why })
end

-- ---- messages from the contact --------------------------------------------------------------

-- Loop bookkeeping for one inbound message; returns a reason to stay silent or nil.
local function loop_check(st, cfg, now, m, folded)
  local loop = cfg.bot.loop
  if text.earliest(folded, cfg.signatures) then
    st.fast = (st.fast or 0) + 1
    return "auto_reply"
  end
  -- Answered (by timestamp) as soon as our last reply can have arrived: a machine's pace.
  local fast = st.last_reply_at and m.ts >= math.floor(st.last_reply_sent or 0)
               and (m.ts - st.last_reply_at) < loop.fast_reply
  if fast or is_echo(st, folded) then
    st.fast = (st.fast or 0) + 1
  else
    st.fast = 0
  end
  if folded ~= "" and folded == st.last_in then
    st.repeats = (st.repeats or 0) + 1
  else
    st.repeats = 0
  end
  st.last_in = text.truncate(folded, 200)
  if st.fast >= loop.max_fast_replies or st.repeats + 1 >= loop.max_repeats then
    st.muted_until = now + loop.mute
    st.fast, st.repeats = 0, 0
    drop_pending(st, "loop")
    alerts.loop(cfg, { phone = st.key })
    wahook.log.warn("bot loop suspected; the bot is muted for this contact",
                    { contact = st.key, until_ts = math.floor(st.muted_until) })
    wahook.metric.inc("bot_loops")
    return "loop"
  end
  return nil
end

-- A message from the contact (already past the ignore rules): buffered for the debounce timer,
-- or answered by nobody with the reason recorded in the CRM.
function M.inbound(st, ev, msg, cfg, now)
  st.key = M.contact_key(ev, msg)
  st.to = msg.phone or msg.chat_jid or st.to
  st.name = msg.push_name or st.name
  local m = { id = msg.id, text = text.truncate(msg.text or "", 1000), type = msg.type,
              ts = msg.timestamp or math.floor(now) }
  local loc = msg.location
  if type(loc) == "table" and (loc.name or loc.address) then
    m.place = text.truncate(loc.name or loc.address, 80)
  end
  m.label = media_label(cfg, m)
  if not cfg.bot.enabled then return activities(st, { m }, false, "disabled") end
  if now - m.ts > cfg.bot.max_message_age then return activities(st, { m }, false, "old") end
  local reason = silenced(st, now)
  if reason then
    -- A person answering a contact the bot never spoke to still makes a conversation (for CSAT).
    if not st.conv and reason == "takeover" then
      st.conv = { started = now, inbound = 0, human = true }
      st.conversations = (st.conversations or 0) + 1
    end
    if st.conv then
      st.conv.inbound = (st.conv.inbound or 0) + 1
      st.conv.last_at = now
    end
    touch_quiet(st, cfg)
    return activities(st, { m }, false, reason)
  end
  reason = loop_check(st, cfg, now, m, text.fold(m.text))
  if reason then return activities(st, { m }, false, reason) end
  st.pending = st.pending or {}
  if #st.pending >= cfg.bot.max_pending then
    activities(st, { table.remove(st.pending, 1) }, false, "overflow")
  end
  st.pending[#st.pending + 1] = m
  st.pending_since = st.pending_since or now
  arm_debounce(st, cfg, now, now + cfg.bot.debounce)
end

-- presence.update: remembered; "composing"/"recording" while messages wait extends the wait.
function M.presence(st, msg, cfg, now)
  st.presence, st.presence_at = msg.presence, now
  if TYPING[msg.presence or ""] and st.pending and #st.pending > 0 then
    local due = now + cfg.bot.typing_extension
    if not st.debounce_due or due > st.debounce_due then arm_debounce(st, cfg, now, due) end
  end
end

-- ---- the debounce timer: one answer for the batch --------------------------------------------

local function out_of_hours(st, cfg, now, batch, combined)
  local conv = st.conv
  local heard = understand.text(combined, cfg, nil)
  flow.absorb(conv, st.lead, heard, cfg)
  if conv.ooh_sent then return activities(st, batch, false, "out_of_hours") end
  conv.ooh_sent, conv.greeted = true, true
  local t = cfg.texts
  local at = hours.next_open(cfg.hours, now)
  local when = hours.describe(cfg.hours, at, now, t)
  local last = batch[#batch]
  local first = text.first_name(st.name)
  say(st, cfg, now, text.fill(first and t.out_of_hours or t.out_of_hours_no_name,
                              { name = first, next_open = when }), last.id, last.ts)
  local due = at or now + 86400
  local label = st.name or st.key
  local summary = flow.summary(st.lead, cfg)
  crm.task(st.key, text.fill(t.task_title, { name = label, phone = st.key }),
           text.fill(t.task_body, { text = text.truncate(combined, 500), summary = summary }), due)
  alerts.out_of_hours(cfg, { phone = st.key, name = st.name, text = combined, due = when,
                             due_at = text.iso(due) })
  activities(st, batch, true, "out_of_hours")
end

local function typing(st, cfg, now)
  return TYPING[st.presence or ""] and st.presence_at
         and now < st.presence_at + cfg.bot.typing_extension
end

function M.flush(st, ev, cfg, now)
  local batch = st.pending
  if not batch or #batch == 0 then
    st.pending, st.pending_since, st.debounce_due = nil, nil, nil
    return
  end
  -- Still typing: wait a little more, never past debounce_max.
  if typing(st, cfg, now) and now < st.pending_since + cfg.bot.debounce_max then
    arm_debounce(st, cfg, now, st.presence_at + cfg.bot.typing_extension)
    return
  end
  local reason = silenced(st, now)
  if reason then return drop_pending(st, reason) end
  -- Rate cap: answer later, when the oldest reply of the last minute has aged out.
  local recent = {}
  for _, t in ipairs(st.replies or {}) do
    if now - t < 60 then recent[#recent + 1] = t end
  end
  st.replies = recent
  if #recent >= cfg.bot.max_replies_per_minute then
    wahook.metric.inc("bot_rate_limited")
    st.debounce_due = recent[1] + 60
    wahook.after(math.max(0.001, st.debounce_due - now), M.TIMER_DEBOUNCE)
    return
  end
  st.pending, st.pending_since, st.debounce_due = nil, nil, nil
  local last = batch[#batch]

  -- The answer to the satisfaction question, if that is what this is.
  if st.csat_asked_at then
    local asked = st.csat_asked_at
    st.csat_asked_at = nil
    if now - asked <= cfg.csat.answer_window then
      for _, m in ipairs(batch) do
        local s = understand.csat(m.text)
        if s then
          wahook.record("csat", { score = s })
          crm.csat(st.key, s)
          wahook.metric.inc("csat_answers", { score = s })
          say(st, cfg, now, cfg.texts.csat_thanks, last.id, last.ts)
          return activities(st, batch, true, "csat")
        end
      end
    end
  end

  -- A new conversation after a quiet window (or the first one).
  local conv = st.conv
  local returning = (st.conversations or 0) > 0
  st.lead = st.lead or {}
  if not conv or now - (conv.last_at or conv.started or 0) > cfg.conversation.window then
    -- A lead left unfinished carries on where it stopped.
    st.conv = { started = now, inbound = 0, intent = st.lead.intent }
    conv = st.conv
    st.conversations = (st.conversations or 0) + 1
  end
  conv.inbound = (conv.inbound or 0) + #batch
  conv.last_at = now

  local texts, has_audio, place = {}, false, nil
  for _, m in ipairs(batch) do
    if m.text ~= "" then texts[#texts + 1] = m.text end
    has_audio = has_audio or m.type == "audio" or m.type == "voice"
    place = place or m.place
  end
  local combined = table.concat(texts, "\n")

  if not hours.is_open(cfg.hours, now) then
    out_of_hours(st, cfg, now, batch, combined)
    return update_lead(st, cfg)
  end

  local heard = understand.text(combined, cfg, conv.asking)
  -- A shared location answers the zone question.
  if conv.asking == "zone" and not heard.zone and place then heard.zone = place end
  local out = flow.step(conv, st.lead, heard, {
    cfg = cfg, name = text.first_name(st.name), returning = returning,
    has_text = #texts > 0, has_audio = has_audio,
  })
  if #out.lines > 0 then
    say(st, cfg, now, table.concat(out.lines, "\n\n"), last.id, last.ts)
  end
  activities(st, batch, #out.lines > 0, #out.lines == 0 and "nothing_to_say" or nil)
  if out.handoff then handoff(st, cfg, now, out.handoff) end
  update_lead(st, cfg)
end

-- ---- the business writes --------------------------------------------------------------------

-- A message from the business's phone or another API client (not wahook's own): the resume and
-- close keywords, else a human takeover.
function M.business(st, ev, msg, cfg, now)
  st.key = M.contact_key(ev, msg)
  st.to = msg.phone or msg.chat_jid or st.to
  local typed = text.lower(text.squash(msg.text or ""))
  if typed ~= "" and typed == cfg.resume_keyword then
    st.takeover_until, st.muted_until = nil, nil
    if st.conv then
      st.conv.human, st.conv.asking = nil, nil
      if st.conv.stage == "handoff" then st.conv.stage = "engaged" end
    end
    wahook.cancel(M.TIMER_CSAT)
    wahook.log.info("bot resumed for a contact", { contact = st.key })
    wahook.metric.inc("bot_resumed")
    return
  end
  if typed ~= "" and typed == cfg.close_keyword then
    return close(st, cfg, now, "keyword")
  end
  local ts = msg.timestamp or now
  if now - ts > cfg.bot.takeover then return end -- history: no takeover in the past
  -- A reply of ours seen before its id is known as wahook's (the echo can beat the send
  -- response): not a person.
  if st.last_reply_at and now - st.last_reply_at < 120 and is_echo(st, text.fold(msg.text or "")) then
    return
  end
  local was = st.takeover_until and st.takeover_until > now
  st.takeover_until = now + cfg.bot.takeover
  if st.conv then st.conv.last_at = now end
  if not was then
    if st.conv then st.conv.human, st.conv.asking = true, nil end
    wahook.record("handoff", { reason = "takeover" })
    wahook.metric.inc("bot_takeovers", { origin = msg.origin or "phone" })
    wahook.log.info("a person took over the conversation; the bot is silent",
                    { contact = st.key, origin = msg.origin, until_ts = math.floor(st.takeover_until) })
  end
  drop_pending(st, "takeover")
  touch_quiet(st, cfg)
end

-- ---- the quiet-period timer -----------------------------------------------------------------

function M.csat_due(st, ev, cfg, now)
  if not st.conv then return end
  if not hours.is_open(cfg.hours, now) then
    local at = hours.next_open(cfg.hours, now)
    if at then wahook.after(math.max(1, at - now), M.TIMER_CSAT) end
    return
  end
  close(st, cfg, now, "quiet")
end

M.close = close
M.update_lead = update_lead

return M
