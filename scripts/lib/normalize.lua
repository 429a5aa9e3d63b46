-- Turns an Evolution API webhook body into the normalised view scripts see as `ev.msg` and the
-- runtime records facts from. Every version quirk lives in a table near the top of this file
-- (jid servers, contact fields, wrappers, content types, statuses, reasons), so the next payload
-- change is a one-line edit there. See ../shared/reference/evolution-api.md for the shapes.
--
--   local normalize = require "lib.normalize"
--   local msg, why = normalize.event(ev)   -- ev = the parsed body {event, instance, data, ...}
--
-- Returns nil and a reason only when the body is unusable (no event name, or a message event
-- whose data has no key). Any field below may be nil.
--
--   event, instance         copied from the body
--   kind                    "message" | "receipt" | "delete" | "edit" | "connection" | "qrcode" |
--                           "presence" | "contacts" | "call" | "other"
--   phone                   the contact's number, E.164 digits without "+" ("34600111222")
--   lid                     the contact's LID alias, "<digits>@lid"
--                           (contact key = phone, else the phone the runtime knows for lid, else lid)
--   chat_jid, chat_kind     the chat; kind "direct" | "group" | "status" | "broadcast" |
--                           "newsletter" | "other"
--   from_me                 boolean (message, receipt, delete, edit)
--   origin                  message: "contact" (inbound), "phone" (typed on the business phone
--                           or another linked device), "api" (sent through Evolution's API)
--   id                      message: WhatsApp message id
--   type, raw_type          message/edit: text | image | video | audio | voice | document |
--                           sticker | location | contact | reaction | poll | button_reply |
--                           list_reply | unknown; raw_type is the Message key ("imageMessage")
--   text                    text, caption, poll name or the chosen button/list title
--   reply_id                button_reply/list_reply: the chosen id
--   quoted_id               id of the quoted message (contextInfo.stanzaId)
--   mentions                list of mentioned JIDs (absent when none)
--   push_name               the contact's profile name; nil when from_me or a bare number
--   timestamp               integer unix seconds from messageTimestamp (never date_time)
--   status                  PENDING | SERVER_ACK | DELIVERY_ACK | READ | PLAYED | ERROR | DELETED
--   key_id                  receipt: the WhatsApp id the receipt is for
--   receipts                receipt in the old array form: list of {key_id, status, chat_jid,
--                           chat_kind, from_me}, and no contact
--   media                   {mimetype, file_name, seconds, size, has_base64}
--   location                {latitude, longitude, name, address}
--   reaction                reaction emoji ("" when a reaction is removed)
--   target_id               the message a reaction, edit or delete refers to
--   edit_type               edit: "MESSAGE_EDIT" | "REVOKE" | ... (protocolMessage type)
--   deleted_id              delete: the deleted message id
--   state, status_reason, reason, own_phone, profile_name                      connection
--   qr (data: URL), code, pairing_code, limit_reached, status_code              qrcode
--   jid, presence, participant, last_seen                                       presence
--   contacts                contacts: list of {phone, lid, push_name, jid}
--   call_id, call_status, video                                                 call
--
-- The body may come from lua-cjson (numbers are floats, null is cjson.null) or from the runtime
-- (integers); only strings, booleans, numbers and tables are trusted, anything else is absent.

local M = {}

-- ---- tables: edit these when Evolution changes ---------------------------------------------

-- JID server -> kind. Users of "pn" and "lid" JIDs are digits before any ":device" / "_agent".
M.jid_servers = {
  ["s.whatsapp.net"] = "pn",
  ["c.us"] = "pn", -- legacy spelling of s.whatsapp.net
  ["lid"] = "lid",
  ["g.us"] = "group",
  ["broadcast"] = "broadcast", -- "status@broadcast" is told apart below
  ["newsletter"] = "newsletter",
}
M.max_user_digits = 20 -- E.164 has 15; LIDs about 15; longer is junk (same bound as the C rule)

-- Where the contact is in a Baileys key, per chat kind: the first field holding a PN JID gives
-- the phone, the first holding a LID JID gives the alias (reference §4.1 "Phone lookup rule").
M.contact_fields = {
  direct = {
    pn = { "remoteJidAlt", "senderPn", "remoteJid" },
    lid = { "remoteJid", "remoteJidAlt", "previousRemoteJid", "senderLid" },
  },
  -- fromMe DMs: remoteJidAlt and sender* describe our own account, only the chat is the peer.
  direct_from_me = {
    pn = { "remoteJid" },
    lid = { "remoteJid" },
  },
  group = {
    pn = { "participantAlt", "participantPn", "participant" },
    lid = { "participant", "participantAlt", "participantLid" },
  },
  -- Status and broadcast lists: remoteJidAlt can hold the author's other form.
  status = {
    pn = { "participantAlt", "participantPn", "participant", "remoteJidAlt" },
    lid = { "participant", "participantAlt", "participantLid", "remoteJidAlt" },
  },
}
M.contact_fields.broadcast = M.contact_fields.status

-- Containers whose .message holds the real content, unwrapped in this order, repeatedly.
M.wrappers = {
  "ephemeralMessage",
  "viewOnceMessage",
  "viewOnceMessageV2",
  "viewOnceMessageV2Extension",
  "documentWithCaptionMessage",
  "editedMessage",
  "deviceSentMessage",
}

-- Message keys that are never the content.
M.not_content = {
  senderKeyDistributionMessage = true,
  messageContextInfo = true,
  base64 = true,
  mediaUrl = true,
  speechToText = true,
}

-- Content keys in order of preference: {key, type, path of the text, path of the reply id}.
M.content_types = {
  { "conversation", "text" },
  { "extendedTextMessage", "text", { "text" } }, -- 2.0.x; flattened to conversation since 2.1
  { "imageMessage", "image", { "caption" } },
  { "videoMessage", "video", { "caption" } },
  { "ptvMessage", "video", { "caption" } },
  { "audioMessage", "audio" }, -- "voice" when ptt, see M.refine_type
  { "documentMessage", "document", { "caption" } },
  { "stickerMessage", "sticker" },
  { "lottieStickerMessage", "sticker" },
  { "locationMessage", "location" },
  { "liveLocationMessage", "location", { "caption" } },
  { "contactMessage", "contact" },
  { "contactsArrayMessage", "contact" },
  { "reactionMessage", "reaction" },
  { "pollCreationMessage", "poll", { "name" } },
  { "pollCreationMessageV2", "poll", { "name" } },
  { "pollCreationMessageV3", "poll", { "name" } },
  { "buttonsResponseMessage", "button_reply", { "selectedDisplayText" }, { "selectedButtonId" } },
  { "templateButtonReplyMessage", "button_reply", { "selectedDisplayText" }, { "selectedId" } },
  { "interactiveResponseMessage", "button_reply", { "body", "text" } },
  { "listResponseMessage", "list_reply", { "title" }, { "singleSelectReply", "selectedRowId" } },
}

M.refine_type = {
  audioMessage = function(c) return c.ptt == true and "voice" or "audio" end,
}

M.media_types = { image = true, video = true, audio = true, voice = true, document = true, sticker = true }

-- Receipt and message statuses: Baileys names, proto enum numbers (2.3.3+ may send numbers),
-- and the Cloud API channel's upper-cased Meta statuses.
M.statuses = {
  ERROR = "ERROR", PENDING = "PENDING", SERVER_ACK = "SERVER_ACK", DELIVERY_ACK = "DELIVERY_ACK",
  READ = "READ", PLAYED = "PLAYED", DELETED = "DELETED",
  SENT = "SERVER_ACK", DELIVERED = "DELIVERY_ACK", FAILED = "ERROR",
  [0] = "ERROR", [1] = "PENDING", [2] = "SERVER_ACK", [3] = "DELIVERY_ACK", [4] = "READ", [5] = "PLAYED",
}

-- connection.update statusReason (Baileys DisconnectReason; 402/406 per Evolution PR #739).
M.reasons = {
  [401] = "logged_out",
  [402] = "banned_temporarily",
  [403] = "forbidden",
  [406] = "banned",
  [408] = "connection_lost",
  [411] = "multidevice_mismatch",
  [428] = "connection_closed",
  [440] = "replaced",
  [500] = "bad_session",
  [503] = "unavailable",
  [515] = "restart_required",
}
-- A state that says more than its code: "refused" carries 428 but means the QR limit was hit.
M.state_reasons = { refused = "qr_limit_reached" }

-- protocolMessage.type as a number (2.3.3+) -> its name.
M.protocol_types = {
  [0] = "REVOKE", [3] = "EPHEMERAL_SETTING", [4] = "EPHEMERAL_SYNC_RESPONSE",
  [5] = "HISTORY_SYNC_NOTIFICATION", [6] = "APP_STATE_SYNC_KEY_SHARE",
  [7] = "APP_STATE_SYNC_KEY_REQUEST", [11] = "SHARE_PHONE_NUMBER", [14] = "MESSAGE_EDIT",
}

M.own_push_names = { ["Você"] = true } -- what Evolution puts in pushName for our own messages

-- ---- small helpers --------------------------------------------------------------------------

local function str(v)
  if type(v) == "string" and v ~= "" then return v end
  return nil
end

local function tbl(v)
  if type(v) == "table" then return v end
  return nil
end

local function get(t, path)
  for _, k in ipairs(path) do
    if type(t) ~= "table" then return nil end
    t = t[k]
  end
  return t
end

local function is_array(t)
  return type(t) == "table" and (t[1] ~= nil or next(t) == nil)
end

-- A 64-bit protobuf integer in any of its JSON encodings: a number, a decimal string (<= 2.3.2)
-- or a Long object {low, high, unsigned} (2.3.6). Returns an integer, or nil for anything else
-- (byte objects {"0": n, ...} included). Unsigned values past 2^63 come back as floats.
function M.long(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return nil end
    return math.tointeger(v) or math.tointeger(math.floor(v))
  elseif t == "string" then
    if not v:match("^%-?%d+$") then return nil end
    return math.tointeger(tonumber(v))
  elseif t == "table" then
    if type(v.low) ~= "number" or type(v.high) ~= "number" then return nil end
    local lo, hi = math.tointeger(v.low), math.tointeger(v.high)
    if not lo or not hi then return nil end
    local n = ((hi & 0xffffffff) << 32) | (lo & 0xffffffff)
    if v.unsigned == true and n < 0 then return n + 18446744073709551616.0 end
    return n
  end
  return nil
end

-- Parses a JID: returns kind ("pn", "lid", "group", "status", "broadcast", "newsletter",
-- "other") and the user part (digits for pn/lid), or nil when v is not a JID at all.
function M.jid(v)
  if type(v) ~= "string" then return nil end
  local user, server = v:match("^([^@]*)@(.*)$")
  if not user then return nil end
  local kind = M.jid_servers[server] or "other"
  if kind == "pn" or kind == "lid" then
    local digits = user:match("^[^:_]*")
    if not digits:match("^%d+$") or #digits > M.max_user_digits then return "other", user end
    return kind, digits
  end
  if kind == "broadcast" and user == "status" then return "status", user end
  return kind, user
end

local CHAT_KINDS = { pn = "direct", lid = "direct", group = "group", status = "status",
                     broadcast = "broadcast", newsletter = "newsletter", other = "other" }

-- The canonical spelling: "<digits>@s.whatsapp.net" / "<digits>@lid" without devices; others as is.
local function canon(v)
  local kind, user = M.jid(v)
  if kind == "pn" then return user .. "@s.whatsapp.net" end
  if kind == "lid" then return user .. "@lid" end
  if kind then return v end
  return nil
end

local function set_chat(msg, jid)
  local kind = M.jid(jid)
  if kind then
    msg.chat_jid = canon(jid)
    msg.chat_kind = CHAT_KINDS[kind]
  end
end

-- The first field of obj, in the order of names, that is a JID of the wanted kind.
local function first(obj, names, want)
  for _, name in ipairs(names) do
    local kind, user = M.jid(obj[name])
    if kind == want then return user end
  end
  return nil
end

-- The contact of a Baileys key (messages, edits, deletes).
local function contact_from_key(msg, key)
  local kind = M.jid(key.remoteJid)
  local rule
  if kind == "pn" or kind == "lid" then
    rule = key.fromMe == true and M.contact_fields.direct_from_me or M.contact_fields.direct
  elseif kind == "group" or kind == "status" or kind == "broadcast" then
    rule = M.contact_fields[kind]
  else
    return -- newsletters, @hosted, @bot, no chat: no contact
  end
  msg.phone = first(key, rule.pn, "pn")
  local lid = first(key, rule.lid, "lid")
  msg.lid = lid and lid .. "@lid" or nil
end

-- The contact named by one JID (receipts, presence, contacts, calls); nil for groups etc.
local function contact_from_jid(msg, jid)
  local kind, user = M.jid(jid)
  if kind == "pn" then msg.phone = user
  elseif kind == "lid" then msg.lid = user .. "@lid" end
end

local function status(v)
  if type(v) == "string" then return M.statuses[v:upper()] end
  if type(v) == "number" then return M.statuses[math.tointeger(v) or -1] end
  return nil
end

-- A profile name, or nil when it is our own placeholder or just a number (Evolution falls back
-- to the participant's number when there is no name).
local function push_name(v)
  v = str(v)
  if not v or M.own_push_names[v] or v:match("^[%d%s+]+$") then return nil end
  return v
end

local function protocol_type(v)
  if type(v) == "string" then return str(v) end
  local n = M.long(v)
  if n then return M.protocol_types[n] or tostring(n) end
  return nil
end

-- ---- message content ------------------------------------------------------------------------

-- Strips wrappers (and the protocolMessage of an edit, noting what it edits).
local function unwrap(message, msg)
  for _ = 1, 8 do -- real payloads nest two or three deep
    local inner
    for _, name in ipairs(M.wrappers) do
      local w = tbl(message[name])
      if w and tbl(w.message) then
        inner = w.message
        break
      end
    end
    local pm = tbl(message.protocolMessage)
    if not inner and pm and tbl(pm.editedMessage) then
      msg.edit_type = protocol_type(pm.type)
      msg.target_id = str(get(pm, { "key", "id" }))
      inner = pm.editedMessage
    end
    if not inner then return message end
    message = inner
  end
  return message
end

-- The content key of message and its entry in M.content_types (nil for unknown content).
local function find_content(message, hint)
  for _, spec in ipairs(M.content_types) do
    if spec[1] == hint and message[hint] ~= nil then return hint, spec end
  end
  for _, spec in ipairs(M.content_types) do
    if message[spec[1]] ~= nil then return spec[1], spec end
  end
  local keys = {}
  for k in pairs(message) do
    if type(k) == "string" and not M.not_content[k] and k:match("Message$") then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys)
  return keys[1], nil
end

local function set_context(msg, data, content)
  for _, ci in ipairs({ tbl(data.contextInfo) or {}, tbl(content) and tbl(content.contextInfo) or {} }) do
    msg.quoted_id = msg.quoted_id or str(ci.stanzaId)
    if not msg.mentions and is_array(ci.mentionedJid) and #ci.mentionedJid > 0 then
      local list = {}
      for _, j in ipairs(ci.mentionedJid) do
        if type(j) == "string" then list[#list + 1] = j end
      end
      if #list > 0 then msg.mentions = list end
    end
  end
end

-- Fills type, raw_type, text and the type-specific fields from data.message.
local function set_content(msg, data)
  local top = tbl(data.message)
  if not top then
    msg.type = "unknown"
    return
  end
  local message = unwrap(top, msg)
  local key, spec = find_content(message, str(data.messageType))
  msg.raw_type = key
  if not spec then
    msg.type = "unknown"
    set_context(msg, data, nil)
    return
  end
  local c = message[key]
  msg.type = M.refine_type[key] and tbl(c) and M.refine_type[key](c) or spec[2]
  if key == "conversation" then
    msg.text = str(c)
  elseif tbl(c) then
    if spec[3] then msg.text = str(get(c, spec[3])) end
    if spec[4] then msg.reply_id = str(get(c, spec[4])) end
  end
  set_context(msg, data, c)
  c = tbl(c)
  if not c then return end
  if M.media_types[msg.type] then
    local b64 = top.base64
    msg.media = {
      mimetype = str(c.mimetype),
      file_name = str(c.fileName),
      seconds = M.long(c.seconds),
      size = M.long(c.fileLength),
      has_base64 = (type(b64) == "string" or type(b64) == "table") or nil,
    }
  elseif msg.type == "location" then
    msg.location = {
      latitude = type(c.degreesLatitude) == "number" and c.degreesLatitude or nil,
      longitude = type(c.degreesLongitude) == "number" and c.degreesLongitude or nil,
      name = str(c.name),
      address = str(c.address),
    }
  elseif msg.type == "reaction" then
    msg.reaction = type(c.text) == "string" and c.text or nil
    msg.target_id = str(get(c, { "key", "id" }))
  end
end

-- ---- events ---------------------------------------------------------------------------------

local handlers = {}

-- messages.upsert and send.message: one message (§4.1, §4.2).
local function message(ev, data, msg)
  local key = tbl(data.key)
  if not key then return nil, ev.event .. ": data.key missing" end
  msg.kind = "message"
  msg.id = str(key.id)
  msg.from_me = key.fromMe == true
  set_chat(msg, key.remoteJid)
  contact_from_key(msg, key)
  if ev.event == "send.message" then
    msg.origin = "api"
  else
    msg.origin = msg.from_me and "phone" or "contact"
  end
  if not msg.from_me then msg.push_name = push_name(data.pushName) end
  msg.timestamp = M.long(data.messageTimestamp)
  msg.status = status(data.status)
  set_content(msg, data)
  return msg
end
handlers["messages.upsert"] = message
handlers["send.message"] = message

local function receipt_fields(r)
  local key = tbl(r.key) or {}
  local out = {
    key_id = str(r.keyId) or str(key.id),
    status = status(r.status) or status(get(r, { "update", "status" })),
    from_me = (r.fromMe == true or key.fromMe == true),
  }
  set_chat(out, r.remoteJid or key.remoteJid)
  return out
end

-- messages.update: one receipt (§4.3); old versions sent arrays, which name no single contact.
handlers["messages.update"] = function(ev, data, msg)
  msg.kind = "receipt"
  if is_array(data) then
    msg.receipts = {}
    for _, r in ipairs(data) do
      if tbl(r) then msg.receipts[#msg.receipts + 1] = receipt_fields(r) end
    end
    return msg
  end
  local r = receipt_fields(data)
  msg.key_id, msg.status, msg.from_me = r.key_id, r.status, r.from_me
  msg.chat_jid, msg.chat_kind = r.chat_jid, r.chat_kind
  if msg.chat_kind == "direct" then contact_from_jid(msg, data.remoteJid or get(data, { "key", "remoteJid" })) end
  return msg
end

-- messages.delete: the bare key (deleted by the contact) or {key, ...} (deleted via the API).
handlers["messages.delete"] = function(ev, data, msg)
  local key = tbl(data.key) or data
  msg.kind = "delete"
  msg.deleted_id = str(key.id)
  msg.target_id = msg.deleted_id
  msg.from_me = key.fromMe == true
  set_chat(msg, key.remoteJid)
  contact_from_key(msg, key)
  msg.timestamp = M.long(data.messageTimestamp)
  msg.status = status(data.status)
  return msg
end

-- messages.edited and send.message.update: the raw protocolMessage (§4.4).
local function edit(ev, data, msg)
  local pm = tbl(get(data, { "message", "protocolMessage" })) or data
  local key = tbl(pm.key) or tbl(data.key)
  if not key then return nil, ev.event .. ": key missing" end
  msg.kind = "edit"
  msg.edit_type = protocol_type(pm.type)
  msg.target_id = str(key.id)
  msg.from_me = key.fromMe == true
  set_chat(msg, key.remoteJid)
  contact_from_key(msg, key)
  local ms = M.long(pm.timestampMs)
  msg.timestamp = ms and ms // 1000 or nil
  if tbl(pm.editedMessage) then
    local target = msg.target_id
    set_content(msg, { message = pm.editedMessage })
    msg.target_id = target
  end
  return msg
end
handlers["messages.edited"] = edit
handlers["send.message.update"] = edit

handlers["connection.update"] = function(ev, data, msg)
  msg.kind = "connection"
  msg.state = str(data.state)
  msg.status_reason = M.long(data.statusReason)
  msg.reason = M.state_reasons[msg.state or ""] or M.reasons[msg.status_reason or 0]
  local kind, user = M.jid(data.wuid)
  if kind == "pn" then msg.own_phone = user end
  msg.profile_name = str(data.profileName)
  return msg
end

handlers["qrcode.updated"] = function(ev, data, msg)
  msg.kind = "qrcode"
  local qr = tbl(data.qrcode)
  if not qr then
    -- QRCODE_LIMIT: {"message": "QR code limit reached, please login again", "statusCode": 500}
    local text = str(data.message)
    if not (text and text:lower():find("limit", 1, true)) then
      return nil, "qrcode.updated: no qrcode"
    end
    msg.limit_reached = true
    msg.status_code = M.long(data.statusCode)
    return msg
  end
  local b64 = str(qr.base64)
  if b64 and not b64:find("^data:") then b64 = "data:image/png;base64," .. b64 end
  msg.qr = b64
  msg.code = str(qr.code)
  msg.pairing_code = str(qr.pairingCode)
  return msg
end

-- presence.update: {id = chat, presences = {[jid] = {lastKnownPresence, lastSeen}}} (§4.7).
handlers["presence.update"] = function(ev, data, msg)
  msg.kind = "presence"
  msg.jid = canon(data.id)
  set_chat(msg, data.id)
  if msg.chat_kind == "direct" then contact_from_jid(msg, data.id) end
  local presences = tbl(data.presences) or {}
  local who, entry = data.id, tbl(presences[data.id])
  if not entry then -- a group, or a differently spelled JID: the first entry, deterministically
    local keys = {}
    for k in pairs(presences) do
      if type(k) == "string" then keys[#keys + 1] = k end
    end
    table.sort(keys)
    for _, k in ipairs(keys) do
      if canon(k) == msg.jid or entry == nil then who, entry = k, tbl(presences[k]) end
    end
  end
  if entry then
    msg.presence = str(entry.lastKnownPresence)
    msg.last_seen = M.long(entry.lastSeen)
    if canon(who) ~= msg.jid then msg.participant = canon(who) end
  end
  return msg
end

local function contact_entry(c)
  local out = { jid = canon(c.remoteJid) or canon(c.id) }
  contact_from_jid(out, c.remoteJid)
  if not out.phone and not out.lid then contact_from_jid(out, c.id) end
  out.push_name = push_name(c.pushName)
  return out
end

-- contacts.upsert / contacts.update: one object after a message, or an array from a sync (§4.8).
local function contacts(ev, data, msg)
  msg.kind = "contacts"
  msg.contacts = {}
  if is_array(data) then
    for _, c in ipairs(data) do
      if tbl(c) then msg.contacts[#msg.contacts + 1] = contact_entry(c) end
    end
    return msg
  end
  local c = contact_entry(data)
  msg.contacts[1] = c
  msg.phone, msg.lid, msg.push_name = c.phone, c.lid, c.push_name
  return msg
end
handlers["contacts.upsert"] = contacts
handlers["contacts.update"] = contacts

handlers["call"] = function(ev, data, msg)
  msg.kind = "call"
  msg.call_id = str(data.id)
  msg.call_status = str(data.status)
  msg.video = data.isVideo == true
  set_chat(msg, data.chatId)
  contact_from_jid(msg, data.from)
  if not msg.phone and not msg.lid then contact_from_jid(msg, data.chatId) end
  return msg
end

M.handlers = handlers

-- ---- entry point ----------------------------------------------------------------------------

function M.event(ev)
  if type(ev) ~= "table" then return nil, "event is not a table" end
  local name = str(ev.event)
  if not name then return nil, "missing event name" end
  local msg = { event = name, instance = str(ev.instance), kind = "other" }
  local handler = handlers[name]
  if not handler then return msg end
  local data = tbl(ev.data)
  if not data then
    if name == "messages.update" or name:match("^contacts%.") then
      return msg -- nothing to say about an empty list or null
    end
    return nil, name .. ": data is not an object"
  end
  return handler(ev, data, msg)
end

return M
