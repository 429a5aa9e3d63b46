-- CRM mapping for CRMs built the way the original system description lists (set
-- wahook.crm.module: "crm.generic_rest"): one request per action, relative to wahook.crm.url.
--   contact_upsert {phone, name?, last_message?, last_message_at?} → POST  /rest/contacts
--   activity       {phone, kind, text?, fields?}                   → POST  /rest/activities
--   lead_score     {phone, score}                                  → PATCH /rest/contacts/{phone}/score
--   task           {phone, title, body?, due_at?}                  → POST  /rest/activities (kind "task")
-- Bodies are JSON with the fields as given (phone as international digits, times as ISO-8601).
-- Every request carries an Idempotency-Key chosen before it is first sent and kept in
-- ctx.progress, so a CRM that honours the header sees a retried action once. Answers are
-- classified like every target's: 401/403/404 misconfigured, 408/429/5xx retried, other 4xx
-- permanent.
--
-- Config (wahook.config.generic_rest, optional): prefix (default "/rest"), timeout (seconds,
-- default 10).
local wahook = require "wahook"
local util = require "crm.util"

local M = {}

local function conf()
  local c = wahook.config and wahook.config.generic_rest
  local o = { prefix = "/rest", timeout = 10 }
  if type(c) == "table" then
    if c.prefix ~= nil then o.prefix = c.prefix end
    if c.timeout ~= nil then o.timeout = c.timeout end
  end
  return o
end

function M.deliver(op, fields, ctx)
  local o = conf()
  if type(fields) ~= "table" then util.bad_input("generic_rest: %s: fields must be a table", tostring(op)) end
  local phone = util.phone_digits(fields.phone)
  if not phone then
    util.bad_input("generic_rest: %s: phone must be an international number, got %s", tostring(op),
                   tostring(fields.phone))
  end
  local method, path, body = "POST", nil, nil
  if op == "contact_upsert" then
    path = "/contacts"
    body = { phone = phone, name = util.str(fields.name), last_message = util.str(fields.last_message),
             last_message_at = util.iso8601(fields.last_message_at) }
  elseif op == "activity" then
    if not util.str(fields.kind) then util.bad_input("generic_rest: activity: kind is required") end
    path = "/activities"
    body = { phone = phone, kind = fields.kind, text = util.str(fields.text), fields = fields.fields }
  elseif op == "lead_score" then
    if type(fields.score) ~= "number" then util.bad_input("generic_rest: lead_score: score must be a number") end
    method, path = "PATCH", "/contacts/" .. util.urlencode(phone) .. "/score"
    body = { score = fields.score }
  elseif op == "task" then
    if not util.str(fields.title) then util.bad_input("generic_rest: task: title is required") end
    path = "/activities"
    body = { phone = phone, kind = "task", title = fields.title, body = util.str(fields.body),
             due_at = util.iso8601(fields.due_at) }
  else
    util.bad_input("generic_rest: unknown operation %s", tostring(op))
  end
  if type(ctx.progress) ~= "table" then ctx.progress = {} end
  ctx.progress.key = ctx.progress.key or util.uuid4()
  local what = "generic_rest: " .. method .. " " .. o.prefix .. path
  local resp = util.request(wahook.http, {
    method = method, url = o.prefix .. path, body = body, timeout = o.timeout,
    headers = { ["Idempotency-Key"] = ctx.progress.key },
  }, what)
  if not util.ok(resp) then util.raise(resp, what) end
  return { status = resp.status }
end

return M
