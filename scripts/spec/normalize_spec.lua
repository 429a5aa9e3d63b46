-- Specs for scripts/lib/normalize.lua: every shared Evolution fixture with its exact normalised
-- view, the per-version key layouts of the reference, legacy encodings, wrappers, Long decoding,
-- receipts, connection/QR/presence/contacts/delete/edit shapes.
local normalize = require "lib.normalize"
local fixtures = require "spec.support.fixtures"

local MARIA = "34600111222"
local MARIA_LID = "207581245931618@lid"
local JORDI = "34600333444"
local JORDI_LID = "118934567201234@lid"
local MARIA_JID = MARIA .. "@s.whatsapp.net"

-- A messages.upsert body around a key and a message, like the reference's examples.
local function upsert(key, message, extra)
  local data = { key = key, message = message or { conversation = "hola" },
                 messageType = "conversation", messageTimestamp = 1761141807 }
  for k, v in pairs(extra or {}) do data[k] = v end
  return { event = "messages.upsert", instance = "acme-bot", data = data }
end

local function norm(body)
  local msg, why = normalize.event(body)
  assert.is_nil(why)
  assert.is_table(msg)
  return msg
end

-- The exact view of each fixture. A new fixture without an entry here fails the suite.
local EXPECTED = {
  ["chats-upsert.json"] = { event = "chats.upsert", instance = "acme-bot", kind = "other" },
  ["connection-update-close.json"] = {
    event = "connection.update", instance = "acme-bot", kind = "connection",
    state = "close", status_reason = 401, reason = "logged_out",
  },
  ["connection-update-connecting.json"] = {
    event = "connection.update", instance = "acme-bot", kind = "connection",
    state = "connecting", status_reason = 200,
  },
  ["connection-update-open.json"] = {
    event = "connection.update", instance = "acme-bot", kind = "connection",
    state = "open", status_reason = 200, own_phone = "34600999888", profile_name = "Acme Store",
  },
  ["contacts-upsert.json"] = {
    event = "contacts.upsert", instance = "acme-bot", kind = "contacts",
    phone = MARIA, push_name = "María López",
    contacts = { { jid = MARIA_JID, phone = MARIA, push_name = "María López" } },
  },
  ["groups-upsert.json"] = { event = "groups.upsert", instance = "acme-bot", kind = "other" },
  ["messages-update-delivery.json"] = {
    event = "messages.update", instance = "acme-bot", kind = "receipt",
    key_id = "3EB0A4C2E6F81B3D5A7C90", status = "DELIVERY_ACK", from_me = true,
    chat_jid = MARIA_LID, chat_kind = "direct", lid = MARIA_LID,
  },
  ["messages-update-read.json"] = {
    event = "messages.update", instance = "acme-bot", kind = "receipt",
    key_id = "3EB07F3A9C1D2E4B5A6F70", status = "READ", from_me = true,
    chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA,
  },
  ["messages-upsert-audio.json"] = {
    event = "messages.upsert", instance = "acme-bot", kind = "message",
    id = "C4D1E8F2A3B5960718293A4B5C6D7E8F", from_me = false, origin = "contact",
    chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA, lid = MARIA_LID,
    push_name = "María López", status = "DELIVERY_ACK", timestamp = 1761142707,
    type = "voice", raw_type = "audioMessage",
    media = { mimetype = "audio/ogg; codecs=opus", seconds = 7, size = 18452 },
  },
  ["messages-upsert-document.json"] = {
    event = "messages.upsert", instance = "acme-bot", kind = "message",
    id = "F0E1D2C3B4A5968778695A4B3C2D1E0F", from_me = false, origin = "contact",
    chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA, lid = MARIA_LID,
    push_name = "María López", status = "DELIVERY_ACK", timestamp = 1761144507,
    type = "document", raw_type = "documentMessage", text = "Te paso el presupuesto",
    media = { mimetype = "application/pdf", file_name = "presupuesto-octubre.pdf", size = 84231 },
  },
  ["messages-upsert-extended-text.json"] = {
    event = "messages.upsert", instance = "acme-bot", kind = "message",
    id = "3A9D4E2F7C1B8A6E5D40", from_me = false, origin = "contact",
    chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA, lid = MARIA_LID,
    push_name = "María López", status = "DELIVERY_ACK", timestamp = 1761142047,
    type = "text", raw_type = "conversation",
    text = "La de las 10:00, gracias! Mi web por si acaso: https://maria.example.org",
    quoted_id = "3EB07F3A9C1D2E4B5A6F70",
  },
  ["messages-upsert-fromme.json"] = {
    -- remoteJidAlt is ignored for fromMe (so no LID), and the owner's name is not the contact's.
    event = "messages.upsert", instance = "acme-bot", kind = "message",
    id = "B7E2A19C4D3F5E60718293A4B5C6D7E8", from_me = true, origin = "phone",
    chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA,
    status = "SERVER_ACK", timestamp = 1761143607,
    type = "text", raw_type = "conversation", text = "Perfecto, te esperamos a las 10:00 😊",
  },
  ["messages-upsert-group.json"] = {
    event = "messages.upsert", instance = "acme-bot", kind = "message",
    id = "3AC51F0E9B2D7A4C8E61", from_me = false, origin = "contact",
    chat_jid = "120363025246125888@g.us", chat_kind = "group", phone = JORDI, lid = JORDI_LID,
    push_name = "Jordi Puig", status = "DELIVERY_ACK", timestamp = 1761143307,
    type = "text", raw_type = "conversation",
    text = "@96351478521036 ¿a qué hora abrís el sábado?", mentions = { "96351478521036@lid" },
  },
  ["messages-upsert-image-base64.json"] = {
    event = "messages.upsert", instance = "acme-bot", kind = "message",
    id = "3A1F0E2D3C4B5A697887", from_me = false, origin = "contact",
    chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA, lid = MARIA_LID,
    push_name = "María López", status = "DELIVERY_ACK", timestamp = 1761142467,
    type = "image", raw_type = "imageMessage", text = "Y esta es la factura",
    media = { mimetype = "image/jpeg", size = 420, has_base64 = true },
  },
  ["messages-upsert-image.json"] = {
    event = "messages.upsert", instance = "acme-bot", kind = "message",
    id = "3A5B9C0D1E2F3A4B5C6D", from_me = false, origin = "contact",
    chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA, lid = MARIA_LID,
    push_name = "María López", status = "DELIVERY_ACK", timestamp = 1761142407,
    type = "image", raw_type = "imageMessage", text = "Así quedó el pedido 📦",
    media = { mimetype = "image/jpeg", size = 148213 },
  },
  ["messages-upsert-lid.json"] = {
    event = "messages.upsert", instance = "acme-bot", kind = "message",
    id = "E1F2A3B4C5D6E7F8A9B0C1D2E3F4A5B6", from_me = false, origin = "contact",
    chat_jid = MARIA_LID, chat_kind = "direct", phone = MARIA, lid = MARIA_LID,
    push_name = "María López", status = "DELIVERY_ACK", timestamp = 1761143907,
    type = "text", raw_type = "conversation", text = "¿Me confirmas la dirección?",
  },
  ["messages-upsert-location.json"] = {
    event = "messages.upsert", instance = "acme-bot", kind = "message",
    id = "D9E8F7A6B5C4D3E2F1A0B9C8D7E6F5A4", from_me = false, origin = "contact",
    chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA, lid = MARIA_LID,
    push_name = "María López", status = "DELIVERY_ACK", timestamp = 1761143007,
    type = "location", raw_type = "locationMessage",
    location = { latitude = 41.3870154, longitude = 2.1700471, name = "Plaça de Catalunya",
                 address = "Plaça de Catalunya, 08002 Barcelona" },
  },
  ["messages-upsert-reaction.json"] = {
    event = "messages.upsert", instance = "acme-bot", kind = "message",
    id = "3A77E0C1D2B3A4F5E6D7", from_me = false, origin = "contact",
    chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA, lid = MARIA_LID,
    push_name = "María López", status = "DELIVERY_ACK", timestamp = 1761143067,
    type = "reaction", raw_type = "reactionMessage", reaction = "👍",
    target_id = "3EB07F3A9C1D2E4B5A6F70",
  },
  ["messages-upsert-status-broadcast.json"] = {
    event = "messages.upsert", instance = "acme-bot", kind = "message",
    id = "3A0B1C2D3E4F5A6B7C8D", from_me = false, origin = "contact",
    chat_jid = "status@broadcast", chat_kind = "status", phone = MARIA, lid = MARIA_LID,
    push_name = "María López", status = "DELIVERY_ACK", timestamp = 1761144207,
    type = "text", raw_type = "conversation", text = "¡Abrimos nueva tienda en Gràcia! 🎉",
  },
  ["messages-upsert-text.json"] = {
    event = "messages.upsert", instance = "acme-bot", kind = "message",
    id = "A5F3C8E1B2D4967F0E1A2B3C4D5E6F70", from_me = false, origin = "contact",
    chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA, lid = MARIA_LID,
    push_name = "María López", status = "DELIVERY_ACK", timestamp = 1761141807,
    type = "text", raw_type = "conversation", text = "Hola, ¿tenéis cita para mañana por la mañana?",
  },
  ["presence-update.json"] = {
    event = "presence.update", instance = "acme-bot", kind = "presence",
    jid = MARIA_JID, chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA,
    presence = "composing",
  },
  ["qrcode-updated.json"] = "qrcode", -- checked field by field below (the QR strings are long)
  ["send-message.json"] = {
    -- Evolution's injected contextInfo (empty mentions, no stanzaId) leaves nothing behind.
    event = "send.message", instance = "acme-bot", kind = "message",
    id = "3EB07F3A9C1D2E4B5A6F70", from_me = true, origin = "api",
    chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA,
    status = "PENDING", timestamp = 1761141987,
    type = "text", raw_type = "conversation",
    text = "Sí, tenemos hueco a las 10:00 o a las 12:30. ¿Cuál prefieres?",
  },
}

describe("normalize.event on the shared fixtures", function()
  local names = fixtures.evolution_names()

  it("finds the fixtures", function()
    assert.is_true(#names >= 23, fixtures.fixtures_dir())
  end)

  for _, name in ipairs(names) do
    it(name, function()
      local want = EXPECTED[name]
      assert.is_not_nil(want, "no expectation for fixture " .. name)
      local body = fixtures.evolution(name)
      local msg = norm(body)
      if want == "qrcode" then
        local qr = body.data.qrcode
        assert.same({ event = "qrcode.updated", instance = "acme-bot", kind = "qrcode",
                      qr = qr.base64, code = qr.code }, msg)
        assert.matches("^data:image/png;base64,iVBOR", msg.qr)
        assert.matches("^2@", msg.code)
      else
        assert.same(want, msg)
      end
      -- Never from date_time, always an integer (cjson hands us floats).
      if msg.timestamp ~= nil then
        assert.equals("integer", math.type(msg.timestamp))
        assert.equals(math.tointeger(body.data.messageTimestamp), msg.timestamp)
      end
    end)
  end
end)

describe("contact rule across Evolution versions (reference §4.1)", function()
  local cases = {
    { "2.2.x LID-addressed, phone nowhere",
      { remoteJid = MARIA_LID, fromMe = false, id = "E1F2" },
      nil, MARIA_LID, MARIA_LID },
    { "2.3.0 LID chat with senderPn",
      { remoteJid = MARIA_LID, fromMe = false, id = "E1F2", senderPn = MARIA_JID },
      MARIA, MARIA_LID, MARIA_LID },
    { "2.3.1-2.3.2 rewritten to PN, LID in previousRemoteJid",
      { remoteJid = MARIA_JID, fromMe = false, id = "E1F2", senderPn = MARIA_JID, participant = "",
        previousRemoteJid = MARIA_LID },
      MARIA, MARIA_LID, MARIA_JID },
    { "2.3.1-2.3.2 senderLid",
      { remoteJid = MARIA_JID, fromMe = false, id = "E1F2", senderPn = MARIA_JID, senderLid = MARIA_LID },
      MARIA, MARIA_LID, MARIA_JID },
    { "2.3.3-2.3.4 remoteJid and remoteJidAlt both PN",
      { remoteJid = MARIA_JID, remoteJidAlt = MARIA_JID, fromMe = false, id = "E1F2", participant = "",
        addressingMode = "lid" },
      MARIA, nil, MARIA_JID },
    { "2.3.5-2.3.6 LID raw, PN in remoteJidAlt",
      { remoteJid = MARIA_LID, remoteJidAlt = MARIA_JID, fromMe = false, id = "E1F2", participant = "",
        addressingMode = "lid" },
      MARIA, MARIA_LID, MARIA_LID },
    { "2.3.5-2.3.6 PN-addressed, LID in remoteJidAlt",
      { remoteJid = MARIA_JID, remoteJidAlt = MARIA_LID, fromMe = false, id = "A5F3", participant = "",
        addressingMode = "pn" },
      MARIA, MARIA_LID, MARIA_JID },
    { "fromMe PN chat: remoteJidAlt (our own LID) ignored",
      { remoteJid = JORDI .. "@s.whatsapp.net", remoteJidAlt = "96351478521036@lid", fromMe = true,
        id = "B7E2" },
      JORDI, nil, JORDI .. "@s.whatsapp.net" },
    { "fromMe LID chat: our own PN in remoteJidAlt ignored",
      { remoteJid = MARIA_LID, remoteJidAlt = "34600999888@s.whatsapp.net", fromMe = true, id = "B7E2" },
      nil, MARIA_LID, MARIA_LID },
    { "fromMe LID chat: senderPn is about our account, ignored",
      { remoteJid = MARIA_LID, senderPn = "34600999888@s.whatsapp.net", fromMe = true, id = "B7E2" },
      nil, MARIA_LID, MARIA_LID },
    { "group author PN in participantAlt",
      { remoteJid = "120363025246125888@g.us", participant = JORDI_LID,
        participantAlt = JORDI .. "@s.whatsapp.net", fromMe = false, id = "3AC5" },
      JORDI, JORDI_LID, "120363025246125888@g.us" },
    { "group 2.3.1 participantPn / participantLid",
      { remoteJid = "120363025246125888@g.us", participant = JORDI_LID,
        participantPn = JORDI .. "@s.whatsapp.net", participantLid = JORDI_LID, id = "3AC5" },
      JORDI, JORDI_LID, "120363025246125888@g.us" },
    { "group legacy PN participant with a device",
      { remoteJid = "120363025246125888@g.us", participant = JORDI .. ":7@s.whatsapp.net", id = "3AC5" },
      JORDI, nil, "120363025246125888@g.us" },
    { "status author LID, PN in remoteJidAlt",
      { remoteJid = "status@broadcast", remoteJidAlt = MARIA_JID, participant = MARIA_LID, id = "3A0B" },
      MARIA, MARIA_LID, "status@broadcast" },
    { "broadcast list",
      { remoteJid = "1761141807@broadcast", participant = JORDI .. "@s.whatsapp.net", id = "3A43" },
      JORDI, nil, "1761141807@broadcast" },
    { "legacy @c.us and a device suffix",
      { remoteJid = MARIA .. ":12@c.us", fromMe = false, id = "3A51" },
      MARIA, nil, MARIA_JID },
    { "newsletter: no contact",
      { remoteJid = "120363123456789012@newsletter", id = "3A44", server_id = "107" },
      nil, nil, "120363123456789012@newsletter" },
    { "non-numeric and over-long users are not phones",
      { remoteJid = "maria@s.whatsapp.net", remoteJidAlt = "346001112223460011122@s.whatsapp.net", id = "3A54" },
      nil, nil, "maria@s.whatsapp.net" },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local msg = norm(upsert(c[2]))
      assert.equals(c[3], msg.phone)
      assert.equals(c[4], msg.lid)
      assert.equals(c[5], msg.chat_jid)
    end)
  end

  it("names the chat kinds", function()
    local kinds = {
      [MARIA_JID] = "direct", [MARIA_LID] = "direct", ["120363025246125888@g.us"] = "group",
      ["status@broadcast"] = "status", ["1761141807@broadcast"] = "broadcast",
      ["120363123456789012@newsletter"] = "newsletter", ["34600111222@hosted"] = "other",
    }
    for jid, kind in pairs(kinds) do
      assert.equals(kind, norm(upsert({ remoteJid = jid, id = "X" })).chat_kind, jid)
    end
    assert.is_nil(norm(upsert({ id = "X" })).chat_kind)
  end)

  it("drops the owner's placeholder and bare numbers as push names", function()
    assert.is_nil(norm(upsert({ remoteJid = MARIA_JID, fromMe = true, id = "X" }, nil,
                              { pushName = "Você" })).push_name)
    assert.is_nil(norm(upsert({ remoteJid = MARIA_JID, id = "X" }, nil, { pushName = "34600111222" })).push_name)
    assert.equals("Mª", norm(upsert({ remoteJid = MARIA_JID, id = "X" }, nil, { pushName = "Mª" })).push_name)
  end)
end)

describe("legacy 2.0.x reply with a link", function()
  -- Short key, no status, protobufjs string encodings (reference §4.1).
  local ctx = { stanzaId = "3EB07F3A9C1D2E4B5A6F70", participant = "34600999888@s.whatsapp.net",
                quotedMessage = { conversation = "Sí, tenemos hueco …" } }
  local body = {
    event = "messages.upsert", instance = "acme-bot",
    data = {
      key = { remoteJid = MARIA_JID, fromMe = false, id = "3A9D4E2F7C1B8A6E5D40" },
      pushName = "María López",
      message = {
        extendedTextMessage = { text = "La de las 10:00 … https://maria.example.org",
                                matchedText = "https://maria.example.org", previewType = "NONE",
                                contextInfo = ctx },
        messageContextInfo = { deviceListMetadata = { senderKeyHash = "4UNtUfCvK1/jDw==",
                                                      senderTimestamp = "1760881613" },
                               deviceListMetadataVersion = 2 },
      },
      contextInfo = ctx,
      messageType = "extendedTextMessage",
      messageTimestamp = 1761142047,
    },
  }

  it("reads the text, the quote and the timestamp", function()
    assert.same({
      event = "messages.upsert", instance = "acme-bot", kind = "message",
      id = "3A9D4E2F7C1B8A6E5D40", from_me = false, origin = "contact",
      chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA,
      push_name = "María López", timestamp = 1761142047,
      type = "text", raw_type = "extendedTextMessage",
      text = "La de las 10:00 … https://maria.example.org", quoted_id = "3EB07F3A9C1D2E4B5A6F70",
    }, norm(body))
  end)

  it("finds the quote inside the content when there is no top-level copy", function()
    body.data.contextInfo = nil
    assert.equals("3EB07F3A9C1D2E4B5A6F70", norm(body).quoted_id)
  end)

  it("reads a <= 2.3.2 image: string longs and base64 bytes", function()
    local msg = norm(upsert({ remoteJid = MARIA_JID, id = "3A5B" }, {
      imageMessage = { url = "https://mmg.whatsapp.net/x", mimetype = "image/jpeg", caption = "pedido",
                       fileSha256 = "JtCAbc+/=", fileLength = "148213", mediaKeyTimestamp = "1761142404",
                       jpegThumbnail = "/9j/4AAQ" },
    }, { messageType = "imageMessage", messageTimestamp = "1761142407" }))
    assert.equals("image", msg.type)
    assert.equals("pedido", msg.text)
    assert.same({ mimetype = "image/jpeg", size = 148213 }, msg.media)
    assert.equals(1761142407, msg.timestamp)
    assert.equals("integer", math.type(msg.timestamp))
  end)
end)

describe("wrappers", function()
  local function content(message)
    return norm(upsert({ remoteJid = MARIA_JID, id = "W1" }, message, { messageType = "unknown" }))
  end

  it("unwraps ephemeralMessage", function()
    local msg = content({ ephemeralMessage = { message = { extendedTextMessage = {
      text = "efímero", contextInfo = { stanzaId = "Q1", expiration = 604800 } } } } })
    assert.equals("text", msg.type)
    assert.equals("efímero", msg.text)
    assert.equals("Q1", msg.quoted_id)
  end)

  it("unwraps viewOnceMessage, V2 and V2Extension", function()
    local a = content({ viewOnceMessage = { message = { imageMessage = { caption = "una vez", viewOnce = true } } } })
    assert.same({ "image", "una vez" }, { a.type, a.text })
    local b = content({ viewOnceMessageV2 = { message = { videoMessage = { caption = "vídeo", seconds = 3 } } } })
    assert.same({ "video", "vídeo", 3 }, { b.type, b.text, b.media.seconds })
    local c = content({ viewOnceMessageV2Extension = { message = { audioMessage = { ptt = true, seconds = 4 } } } })
    assert.same({ "voice", "audioMessage" }, { c.type, c.raw_type })
  end)

  it("unwraps editedMessage, documentWithCaptionMessage and nested wrappers", function()
    assert.equals("corregido", content({ editedMessage = { message = { conversation = "corregido" } } }).text)
    local d = content({ documentWithCaptionMessage = { message = { documentMessage = {
      fileName = "a.pdf", mimetype = "application/pdf", caption = "mira", fileLength = { low = 10, high = 0, unsigned = true } } } } })
    assert.same({ "document", "mira", "a.pdf", 10 }, { d.type, d.text, d.media.file_name, d.media.size })
    local n = content({ ephemeralMessage = { message = { viewOnceMessageV2 = { message = {
      imageMessage = { caption = "doble" } } } } } })
    assert.same({ "image", "doble" }, { n.type, n.text })
  end)

  it("follows an edit's protocolMessage to the new content", function()
    local msg = content({ editedMessage = { message = { protocolMessage = {
      key = { remoteJid = MARIA_JID, fromMe = false, id = "ORIG" }, type = 14,
      editedMessage = { conversation = "nuevo texto" } } } } })
    assert.same({ "text", "nuevo texto", "MESSAGE_EDIT", "ORIG" },
                { msg.type, msg.text, msg.edit_type, msg.target_id })
  end)

  it("skips senderKeyDistributionMessage and messageContextInfo", function()
    local msg = content({ senderKeyDistributionMessage = { groupId = "g" },
                          messageContextInfo = { messageSecret = { ["0"] = 1 } },
                          conversation = "hola grupo" })
    assert.same({ "text", "conversation", "hola grupo" }, { msg.type, msg.raw_type, msg.text })
  end)
end)

describe("message types", function()
  local function typed(message)
    local msg = norm(upsert({ remoteJid = MARIA_JID, id = "T1" }, message, { messageType = "x" }))
    return msg
  end

  it("maps each content key", function()
    local cases = {
      { { conversation = "a" }, "text" },
      { { extendedTextMessage = { text = "a" } }, "text" },
      { { imageMessage = {} }, "image" },
      { { videoMessage = {} }, "video" },
      { { ptvMessage = {} }, "video" },
      { { audioMessage = { ptt = false } }, "audio" },
      { { audioMessage = { ptt = true } }, "voice" },
      { { documentMessage = {} }, "document" },
      { { stickerMessage = { mimetype = "image/webp" } }, "sticker" },
      { { locationMessage = {} }, "location" },
      { { liveLocationMessage = {} }, "location" },
      { { contactMessage = { displayName = "Jordi" } }, "contact" },
      { { contactsArrayMessage = { contacts = {} } }, "contact" },
      { { reactionMessage = { text = "", key = { id = "R" } } }, "reaction" },
      { { pollCreationMessageV3 = { name = "¿Hora?" } }, "poll" },
      { { buttonsResponseMessage = { selectedButtonId = "b1", selectedDisplayText = "Sí" } }, "button_reply" },
      { { templateButtonReplyMessage = { selectedId = "t1", selectedDisplayText = "Vale" } }, "button_reply" },
      { { interactiveResponseMessage = { body = { text = "Ok" } } }, "button_reply" },
      { { listResponseMessage = { title = "Mañana", singleSelectReply = { selectedRowId = "r2" } } }, "list_reply" },
      { { groupInviteMessage = { groupName = "x" } }, "unknown" },
      { {}, "unknown" },
    }
    for i, c in ipairs(cases) do
      assert.equals(c[2], typed(c[1]).type, "case " .. i)
    end
  end)

  it("reads texts and reply ids of interactive answers and polls", function()
    local b = typed({ buttonsResponseMessage = { selectedButtonId = "b1", selectedDisplayText = "Sí" } })
    assert.same({ "Sí", "b1" }, { b.text, b.reply_id })
    local t = typed({ templateButtonReplyMessage = { selectedId = "t1", selectedDisplayText = "Vale" } })
    assert.same({ "Vale", "t1" }, { t.text, t.reply_id })
    local l = typed({ listResponseMessage = { title = "Mañana", singleSelectReply = { selectedRowId = "r2" } } })
    assert.same({ "Mañana", "r2" }, { l.text, l.reply_id })
    assert.equals("¿Hora?", typed({ pollCreationMessageV3 = { name = "¿Hora?" } }).text)
  end)

  it("keeps a removed reaction and the unknown key", function()
    local r = typed({ reactionMessage = { text = "", key = { id = "R9" } } })
    assert.same({ "", "R9" }, { r.reaction, r.target_id })
    local u = typed({ groupInviteMessage = { groupName = "x" } })
    assert.equals("groupInviteMessage", u.raw_type)
    assert.is_nil(u.text)
  end)

  it("accepts a message without content", function()
    local msg = norm(upsert({ remoteJid = MARIA_JID, id = "T2" }, nil, { message = false }))
    assert.equals("unknown", msg.type)
  end)
end)

describe("64-bit fields", function()
  it("decodes every encoding of a Long", function()
    assert.equals(1761143067418, normalize.long({ low = 206476058, high = 410, unsigned = false }))
    assert.equals(1761143067418, normalize.long({ low = 206476058.0, high = 410.0, unsigned = false }))
    assert.equals(4294967295, normalize.long({ low = -1, high = 0, unsigned = true }))
    assert.equals(-1, normalize.long({ low = -1, high = -1, unsigned = false }))
    assert.equals(18446744073709551615.0, normalize.long({ low = -1, high = -1, unsigned = true }))
    assert.equals(1761142404, normalize.long("1761142404"))
    assert.equals(-5, normalize.long("-5"))
    assert.equals(1761142404, normalize.long(1761142404.0))
    assert.equals("integer", math.type(normalize.long(1761142404.0)))
    assert.equals(7, normalize.long(7.9))
    assert.is_nil(normalize.long({ ["0"] = 1, ["1"] = 2 })) -- a bytes object
    assert.is_nil(normalize.long("JtCA+/="))
    assert.is_nil(normalize.long("12.5"))
    assert.is_nil(normalize.long(0 / 0))
    assert.is_nil(normalize.long(math.huge))
    assert.is_nil(normalize.long(true))
  end)

  it("takes messageTimestamp as a number, a Long or a string, never date_time", function()
    for _, ts in ipairs({ 1761141807, 1761141807.0, "1761141807", { low = 1761141807, high = 0, unsigned = false } }) do
      local body = upsert({ remoteJid = MARIA_JID, id = "L1" }, nil, { messageTimestamp = ts })
      body.date_time = "2025-10-22T11:03:27.512Z"
      local msg = norm(body)
      assert.equals(1761141807, msg.timestamp)
      assert.equals("integer", math.type(msg.timestamp))
    end
    local body = upsert({ remoteJid = MARIA_JID, id = "L2" }, nil, { messageTimestamp = false })
    body.date_time = "2025-10-22T11:03:27.512Z"
    assert.is_nil(norm(body).timestamp)
  end)
end)

describe("receipts", function()
  local function receipt(status, jid)
    return norm({ event = "messages.update", instance = "acme-bot",
                  data = { keyId = "3EB0X", remoteJid = jid or MARIA_JID, fromMe = true, status = status } })
  end

  it("keeps Baileys statuses and maps Cloud API ones", function()
    local map = {
      PENDING = "PENDING", SERVER_ACK = "SERVER_ACK", DELIVERY_ACK = "DELIVERY_ACK", READ = "READ",
      PLAYED = "PLAYED", ERROR = "ERROR", DELETED = "DELETED",
      SENT = "SERVER_ACK", DELIVERED = "DELIVERY_ACK", FAILED = "ERROR", delivered = "DELIVERY_ACK",
    }
    for raw, want in pairs(map) do
      assert.equals(want, receipt(raw).status, raw)
    end
    assert.equals("READ", receipt(4).status)
    assert.equals("READ", receipt(4.0).status)
    assert.is_nil(receipt("WAT").status)
    assert.equals("3EB0X", receipt("READ").key_id)
  end)

  it("has a contact only for direct chats", function()
    local g = norm({ event = "messages.update", data = { keyId = "K", remoteJid = "120363025246125888@g.us",
                                                        participant = JORDI .. "@s.whatsapp.net", status = "READ" } })
    assert.same({ nil, nil, "group" }, { g.phone, g.lid, g.chat_kind })
  end)

  it("reads the old array form without a contact", function()
    local msg = norm({ event = "messages.update", instance = "acme-bot", data = {
      { keyId = "K1", remoteJid = MARIA_JID, status = "READ" },
      { key = { id = "K2", remoteJid = MARIA_LID, fromMe = true }, update = { status = 3 } },
    } })
    assert.same({
      event = "messages.update", instance = "acme-bot", kind = "receipt",
      receipts = {
        { key_id = "K1", status = "READ", from_me = false, chat_jid = MARIA_JID, chat_kind = "direct" },
        { key_id = "K2", status = "DELIVERY_ACK", from_me = true, chat_jid = MARIA_LID, chat_kind = "direct" },
      },
    }, msg)
  end)
end)

describe("connection.update", function()
  it("names every documented reason", function()
    local words = {
      [401] = "logged_out", [402] = "banned_temporarily", [403] = "forbidden", [406] = "banned",
      [408] = "connection_lost", [411] = "multidevice_mismatch", [428] = "connection_closed",
      [440] = "replaced", [500] = "bad_session", [503] = "unavailable", [515] = "restart_required",
    }
    for code, word in pairs(words) do
      local msg = norm({ event = "connection.update", data = { instance = "acme-bot", state = "close",
                                                               statusReason = code + 0.0 } })
      assert.equals(word, msg.reason)
      assert.equals(code, msg.status_reason)
    end
  end)

  it("reports the QR limit's refused state", function()
    local msg = norm({ event = "connection.update", instance = "acme-bot", data = {
      instance = "acme-bot", state = "refused", statusReason = 428, wuid = "34600999888@s.whatsapp.net",
      profileName = "Acme Store" } })
    assert.same({ "refused", 428, "qr_limit_reached", "34600999888" },
                { msg.state, msg.status_reason, msg.reason, msg.own_phone })
  end)
end)

describe("qrcode.updated", function()
  it("recognises the QR limit shape", function()
    assert.same({ event = "qrcode.updated", instance = "acme-bot", kind = "qrcode",
                  limit_reached = true, status_code = 500 },
                norm({ event = "qrcode.updated", instance = "acme-bot",
                       data = { message = "QR code limit reached, please login again", statusCode = 500 } }))
  end)

  it("keeps a pairing code and makes a data URL of bare base64", function()
    local msg = norm({ event = "qrcode.updated", data = { qrcode = {
      instance = "acme-bot", pairingCode = "WZYEH1YY", code = "2@abc", base64 = "iVBORw0KGgo=" } } })
    assert.same({ "WZYEH1YY", "2@abc", "data:image/png;base64,iVBORw0KGgo=" }, { msg.pairing_code, msg.code, msg.qr })
  end)

  it("refuses a shape it does not know", function()
    local msg, why = normalize.event({ event = "qrcode.updated", data = { other = 1 } })
    assert.is_nil(msg)
    assert.matches("qrcode", why)
  end)
end)

describe("presence.update", function()
  it("reads a LID chat", function()
    local msg = norm({ event = "presence.update", data = { id = MARIA_LID,
      presences = { [MARIA_LID] = { lastKnownPresence = "recording", lastSeen = 1761141807 } } } })
    assert.same({ MARIA_LID, "recording", MARIA_LID, nil, 1761141807 },
                { msg.jid, msg.presence, msg.lid, msg.phone, msg.last_seen })
  end)

  it("reads a group: the participant is not the contact", function()
    local msg = norm({ event = "presence.update", data = { id = "120363025246125888@g.us",
      presences = { [JORDI_LID] = { lastKnownPresence = "composing" } } } })
    assert.same({ "group", "composing", JORDI_LID, nil, nil },
                { msg.chat_kind, msg.presence, msg.participant, msg.phone, msg.lid })
  end)
end)

describe("contacts.upsert", function()
  it("takes the single object form", function()
    local msg = norm({ event = "contacts.upsert", data = { remoteJid = MARIA_LID, pushName = "María López",
                                                           profilePicUrl = false } })
    assert.same({ { jid = MARIA_LID, lid = MARIA_LID, push_name = "María López" } }, msg.contacts)
    assert.same({ nil, MARIA_LID }, { msg.phone, msg.lid })
  end)

  it("takes the array form, without a top-level contact", function()
    local msg = norm({ event = "contacts.upsert", instance = "acme-bot", data = {
      { remoteJid = MARIA_JID, pushName = "María López", profilePicUrl = false },
      { remoteJid = JORDI_LID, pushName = "34600333444" },
      { id = "34600555666@s.whatsapp.net", pushName = "34600555666" },
    } })
    assert.same({
      event = "contacts.upsert", instance = "acme-bot", kind = "contacts",
      contacts = {
        { jid = MARIA_JID, phone = MARIA, push_name = "María López" },
        { jid = JORDI_LID, lid = JORDI_LID },
        { jid = "34600555666@s.whatsapp.net", phone = "34600555666" },
      },
    }, msg)
  end)
end)

describe("deletes and edits", function()
  it("reads messages.delete as a bare key", function()
    local msg = norm({ event = "messages.delete", instance = "acme-bot", data = {
      remoteJid = MARIA_JID, remoteJidAlt = MARIA_LID, fromMe = false, id = "F0E1", participant = "",
      addressingMode = "pn" } })
    assert.same({ event = "messages.delete", instance = "acme-bot", kind = "delete",
                  deleted_id = "F0E1", target_id = "F0E1", from_me = false,
                  chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA, lid = MARIA_LID }, msg)
  end)

  it("reads messages.delete via the API", function()
    local msg = norm({ event = "messages.delete", data = { id = "cmh2aaaa",
      key = { remoteJid = MARIA_JID, fromMe = true, id = "3EB0FF" }, messageType = "conversation",
      status = "DELETED", messageTimestamp = 1761141807 } })
    assert.same({ "3EB0FF", true, MARIA, "DELETED", 1761141807 },
                { msg.deleted_id, msg.from_me, msg.phone, msg.status, msg.timestamp })
  end)

  it("reads messages.edited and send.message.update", function()
    local msg = norm({ event = "messages.edited", instance = "acme-bot", data = {
      key = { remoteJid = MARIA_JID, fromMe = false, id = "3A71" }, type = "MESSAGE_EDIT",
      editedMessage = { conversation = "corregido" }, timestampMs = "1761143067418" } })
    assert.same({ event = "messages.edited", instance = "acme-bot", kind = "edit",
                  edit_type = "MESSAGE_EDIT", target_id = "3A71", from_me = false,
                  chat_jid = MARIA_JID, chat_kind = "direct", phone = MARIA, timestamp = 1761143067,
                  type = "text", raw_type = "conversation", text = "corregido" }, msg)
    local sent = norm({ event = "send.message.update", data = {
      key = { remoteJid = MARIA_JID, fromMe = true, id = "3EB0AB" }, type = 14,
      editedMessage = { extendedTextMessage = { text = "x" } },
      timestampMs = { low = 206476058, high = 410, unsigned = false } } })
    assert.same({ "MESSAGE_EDIT", "3EB0AB", "x", 1761143067 },
                { sent.edit_type, sent.target_id, sent.text, sent.timestamp })
    local revoke = norm({ event = "messages.edited", data = { key = { remoteJid = MARIA_JID, id = "R1" }, type = 0 } })
    assert.same({ "REVOKE", "R1", nil }, { revoke.edit_type, revoke.target_id, revoke.type })
  end)
end)

describe("other events and bad input", function()
  it("reads a call", function()
    local msg = norm({ event = "call", data = { chatId = MARIA_JID, from = MARIA_JID, id = "7C3E",
                                                status = "offer", isVideo = false } })
    assert.same({ "call", MARIA, "7C3E", "offer", false }, { msg.kind, msg.phone, msg.call_id, msg.call_status, msg.video })
  end)

  it("passes unknown events through with no contact", function()
    assert.same({ event = "logout.instance", instance = "acme-bot", kind = "other" },
                norm({ event = "logout.instance", instance = "acme-bot", data = false }))
    assert.same({ event = "messages.set", kind = "other" },
                norm({ event = "messages.set", data = { key = { remoteJid = MARIA_JID, id = "X" } } }))
  end)

  it("refuses what cannot be an event", function()
    local cases = {
      { nil, "not a table" },
      { {}, "event" },
      { { event = "" }, "event" },
      { { event = 5 }, "event" },
      { { event = "messages.upsert", data = {} }, "key" },
      { { event = "messages.upsert", data = false }, "data" },
      { { event = "connection.update" }, "data" },
    }
    for _, c in ipairs(cases) do
      local msg, why = normalize.event(c[1])
      assert.is_nil(msg)
      assert.matches(c[2], why)
    end
  end)
end)
