-- Specs for scripts/crm/util.lua: SHA-1 against FIPS 180 vectors, UUIDv5 against RFC 9562,
-- random UUIDs, URL encoding, phone numbers, times and the classification of HTTP answers.
local util = require "crm.util"

describe("sha1", function()
  it("matches the FIPS 180 test vectors", function()
    assert.equal("da39a3ee5e6b4b0d3255bfef95601890afd80709", util.hex(util.sha1("")))
    assert.equal("a9993e364706816aba3e25717850c26c9cd0d89d", util.hex(util.sha1("abc")))
    assert.equal("84983e441c3bd26ebaae4aa1f95129e5e54670f1",
                 util.hex(util.sha1("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")))
    assert.equal("34aa973cd4c4daa4f61eeb2bdbad27316534016f", util.hex(util.sha1(string.rep("a", 1000000))))
  end)

  it("pads correctly around the block boundary", function()
    -- 55, 56 and 64 bytes: the length field fits, just does not, and a full block.
    assert.equal("c1c8bbdc22796e28c0e15163d20899b65621d65a", util.hex(util.sha1(string.rep("a", 55))))
    assert.equal("c2db330f6083854c99d4b5bfb6e8f29f201be699", util.hex(util.sha1(string.rep("a", 56))))
    assert.equal("0098ba824b5c16427bd7a1122a5a442a25ec644d", util.hex(util.sha1(string.rep("a", 64))))
  end)
end)

describe("uuid", function()
  it("computes RFC 9562 version-5 UUIDs", function()
    assert.equal("2ed6657d-e927-568b-95e1-2665a8aea6a2", util.uuid5(util.NS.dns, "www.example.com"))
    assert.equal("2ed6657d-e927-568b-95e1-2665a8aea6a2",
                 util.uuid5("6BA7B810-9DAD-11D1-80B4-00C04FD430C8", "www.example.com"))
    -- Cross-checked with Python's uuid.uuid5.
    assert.equal("886313e1-3b8a-5372-9b90-0c9aee199e5d", util.uuid5(util.NS.dns, "python.org"))
    assert.equal("4c565f0d-3f5a-5890-b41b-20cf47701c5e", util.uuid5(util.NS.url, "http://python.org/"))
  end)

  it("is deterministic and sets version and variant", function()
    local a = util.uuid5(util.NS.url, "acme:5511987654321")
    assert.equal(a, util.uuid5(util.NS.url, "acme:5511987654321"))
    assert.not_equal(a, util.uuid5(util.NS.url, "acme:5511987654322"))
    assert.truthy(util.is_uuid(a))
    assert.equal("5", a:sub(15, 15))
    assert.truthy(a:sub(20, 20):match("[89ab]"))
    assert.has_error(function() util.uuid5("nope", "x") end)
  end)

  it("makes random version-4 UUIDs", function()
    local seen = {}
    for _ = 1, 50 do
      local u = util.uuid4()
      assert.truthy(util.is_uuid(u))
      assert.equal("4", u:sub(15, 15))
      assert.truthy(u:sub(20, 20):match("[89ab]"))
      assert.is_nil(seen[u])
      seen[u] = true
    end
    assert.falsy(util.is_uuid("2ed6657d-e927-568b-95e1-2665a8aea6a"))
    assert.falsy(util.is_uuid(42))
  end)
end)

describe("urlencode", function()
  it("encodes everything but unreserved characters, + included", function()
    assert.equal("and%28phones.primaryPhoneNumber%5Beq%5D%3A%2211987654321%22%2C"
                 .. "phones.primaryPhoneCallingCode%5Beq%5D%3A%22%2B55%22%29",
                 util.urlencode('and(phones.primaryPhoneNumber[eq]:"11987654321",phones.primaryPhoneCallingCode[eq]:"+55")'))
    assert.equal("a%20b~_-.%C3%A9", util.urlencode("a b~_-.é"))
  end)
end)

describe("phones", function()
  it("reads international numbers in the usual forms", function()
    for _, v in ipairs({ "34600111222", "+34 600 111 222", "0034600111222", "34600111222@s.whatsapp.net",
                         "34600111222:12@s.whatsapp.net", "+34 (600) 11-12.22", 34600111222 }) do
      assert.equal("34600111222", util.phone_digits(v))
    end
    for _, v in ipairs({ "abc", "123", "+0123456789", "1234567890123456", "", {}, 3.5 }) do
      assert.is_nil(util.phone_digits(v))
    end
  end)

  it("splits the calling code from the national number", function()
    local cases = {
      { "5511987654321", "55", "11987654321" }, { "14155552671", "1", "4155552671" },
      { "79161234567", "7", "9161234567" }, { "34600111222", "34", "600111222" },
      { "447911123456", "44", "7911123456" }, { "351912345678", "351", "912345678" },
      { "393471234567", "39", "3471234567" }, { "5215512345678", "52", "15512345678" },
      { "971501234567", "971", "501234567" }, { "8613812345678", "86", "13812345678" },
      { "2348012345678", "234", "8012345678" },
    }
    for _, c in ipairs(cases) do
      local cc, nat = util.split_phone(c[1])
      assert.same({ c[2], c[3] }, { cc, nat })
    end
  end)
end)

describe("times", function()
  it("formats epoch seconds or ms as ISO-8601 UTC and passes ISO strings through", function()
    assert.equal("2026-01-05T10:02:00Z", util.iso8601(1767607320))
    assert.equal("2026-01-05T10:02:00Z", util.iso8601(1767607320123))
    assert.equal("2026-01-06T09:00:00-03:00", util.iso8601("2026-01-06T09:00:00-03:00"))
    assert.is_nil(util.iso8601("tomorrow"))
    assert.is_nil(util.iso8601(-5))
  end)
end)

describe("http answers", function()
  local function resp(status, json, headers)
    return { status = status, json = json, body = json and "{…}" or "plain text", headers = headers or {} }
  end

  it("classifies by status", function()
    for _, s in ipairs({ 401, 403, 404 }) do assert.is_true(util.http_error(resp(s), "x").misconfigured) end
    for _, s in ipairs({ 408, 429, 500, 502, 503 }) do assert.is_true(util.http_error(resp(s), "x").retry) end
    for _, s in ipairs({ 400, 409, 422 }) do assert.is_true(util.http_error(resp(s), "x").permanent) end
    assert.is_true(util.http_error(resp(302), "x").retry)
    assert.is_true(util.ok(resp(201)))
    assert.is_false(util.ok(resp(400)))
  end)

  it("describes Twenty's error shape and the raw body otherwise", function()
    local e = util.http_error(resp(400, { statusCode = 400, error = "BadRequestException",
                                           messages = { "Invalid cursor" } }), "twenty: find")
    assert.equal("twenty: find: HTTP 400: BadRequestException: Invalid cursor", e.message)
    assert.equal(400, e.status)
    assert.equal("x: HTTP 502: plain text", util.http_error(resp(502), "x").message)
  end)

  it("reads Retry-After and retryAfterSeconds", function()
    assert.equal(12, util.http_error(resp(429, nil, { ["retry-after"] = "12" }), "x").retry_after)
    assert.equal(9, util.http_error(resp(429, { retryAfterSeconds = 9 }), "x").retry_after)
    assert.is_nil(util.http_error(resp(429, { messages = { "Limit reached (100 tokens per 60000 ms)" } }), "x").retry_after)
  end)

  it("turns a failed transfer into a retry error", function()
    local http = { request = function() return nil, "timed out" end }
    local ok, e = pcall(util.request, http, { url = "/x" }, "twenty: ping")
    assert.is_false(ok)
    assert.same({ retry = true, message = "twenty: ping: timed out" }, e)
  end)
end)
