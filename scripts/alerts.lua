-- What the team is told, and when: every wahook.alert and wahook.mail the scripts queue. The
-- wording is in wahook.scripts.config.texts; the intervals in alerts.*.
--
-- Alert kinds: handoff, out_of_hours, bot_loop, connection_closed, connection_restored,
-- qr_limit. Connection and QR events have no contact: their state (inst below) is the
-- instance's, so flapping and QR rotation are tracked per instance.
local wahook = require "wahook"
local text = require "bot.text"

local M = {}

local function phone_label(phone)
  if type(phone) == "string" and phone:match("^%d+$") then return "+" .. phone end
  return phone or "?"
end

function M.handoff(cfg, info)
  local t = cfg.texts
  wahook.alert("handoff", text.fill(t.alert_handoff, {
    name = info.name or phone_label(info.phone), phone = phone_label(info.phone),
    score = info.score or 0, reason = t.handoff_reasons[info.reason] or info.reason,
    summary = info.summary,
  }), { phone = info.phone, name = info.name, score = info.score, reason = info.reason,
        intent = info.intent })
end

function M.out_of_hours(cfg, info)
  if not cfg.alerts.out_of_hours then return end
  wahook.alert("out_of_hours", text.fill(cfg.texts.alert_out_of_hours, {
    name = info.name or phone_label(info.phone), phone = phone_label(info.phone),
    text = text.truncate(info.text, 300), due = info.due,
  }), { phone = info.phone, due_at = info.due_at })
end

function M.loop(cfg, info)
  wahook.alert("bot_loop", text.fill(cfg.texts.alert_loop, {
    phone = phone_label(info.phone), minutes = math.floor(cfg.bot.loop.mute / 60 + 0.5),
  }), { phone = info.phone })
end

-- ---- connection.update ----------------------------------------------------------------------

-- The QR-limit alert is shared by qrcode.updated (limit variant) and connection.update
-- "refused", which Evolution sends together: one alert per cooldown.
local function qr_limit(inst, cfg, now, instance)
  local last = inst.qr_limit_at
  if last and now - last < cfg.alerts.connection_cooldown then
    wahook.log.info("QR limit alert already sent", { instance = instance })
    return
  end
  inst.qr_limit_at = now
  wahook.alert("qr_limit", text.fill(cfg.texts.alert_qr_limit, { instance = instance }),
               { instance = instance })
end

-- Close alerts at most once per alerts.connection_cooldown; the closes in between are counted
-- and mentioned in the next alert. A reconnection is announced only after an alerted close.
function M.connection(inst, msg, cfg, now)
  local t = cfg.texts
  local instance = msg.instance or "?"
  local state = msg.state or "unknown"
  inst.conn_state, inst.conn_at = state, now
  if state == "close" then
    local reason = msg.reason or "unknown"
    local words = t.reasons[reason] or t.reasons.unknown or reason
    local last = inst.close_alert_at
    if last and now - last < cfg.alerts.connection_cooldown then
      inst.closes_suppressed = (inst.closes_suppressed or 0) + 1
      wahook.log.warn("WhatsApp disconnected again; alert suppressed (flapping)", {
        instance = instance, reason = reason, code = msg.status_reason,
        suppressed = inst.closes_suppressed,
      })
      return
    end
    local n = inst.closes_suppressed or 0
    wahook.alert("connection_closed", text.fill(t.alert_connection_close, {
      instance = instance, reason = words, code = msg.status_reason or "?",
      suppressed = n > 0 and text.fill(t.suppressed, { count = n }) or "",
    }), { instance = instance, reason = reason, code = msg.status_reason, suppressed = n })
    inst.close_alert_at, inst.closes_suppressed, inst.restored_pending = now, 0, true
  elseif state == "open" then
    wahook.log.info("WhatsApp connected", { instance = instance, number = msg.own_phone,
                                            profile = msg.profile_name })
    if inst.restored_pending then
      inst.restored_pending = nil
      wahook.alert("connection_restored", text.fill(t.alert_connection_restored, {
        instance = instance, number = phone_label(msg.own_phone),
      }), { instance = instance, number = msg.own_phone })
    end
  elseif msg.reason == "qr_limit_reached" then
    qr_limit(inst, cfg, now, instance)
  else
    wahook.log.info("WhatsApp connection state", { instance = instance, state = state,
                                                   code = msg.status_reason })
  end
end

-- ---- qrcode.updated -------------------------------------------------------------------------

-- Mails the QR code to the admins as a PNG, at most once per alerts.qr_mail_interval per
-- instance (Evolution rotates the code about every 20 s).
function M.qrcode(inst, msg, cfg, now)
  local t = cfg.texts
  local instance = msg.instance or "?"
  if msg.limit_reached then
    qr_limit(inst, cfg, now, instance)
    return
  end
  if #cfg.admin_emails == 0 then
    wahook.log.warn("QR code received but no admin_email is configured to send it to",
                    { instance = instance })
    return
  end
  local qr = msg.qr
  if type(qr) ~= "string" or not qr:match("^data:image/png;base64,") then
    wahook.log.warn("QR code event without a PNG data URL", { instance = instance })
    return
  end
  local last = inst.qr_mail_at
  if last and now - last < cfg.alerts.qr_mail_interval then
    inst.qr_skipped = (inst.qr_skipped or 0) + 1
    return
  end
  inst.qr_mail_at, inst.qr_skipped = now, 0
  local pairing = msg.pairing_code and text.fill(t.qr_pairing, { code = msg.pairing_code }) or ""
  local vars = { instance = instance, pairing = pairing,
                 interval = math.floor(cfg.alerts.qr_mail_interval / 60 + 0.5) }
  local safe = instance:gsub("[^%w%-_]", "_")
  wahook.mail(cfg.admin_emails, text.fill(t.qr_subject, vars), text.fill(t.qr_body, vars), {
    { filename = "whatsapp-qr-" .. safe .. ".png", content_type = "image/png", data_url = qr },
  })
end

return M
