-- Specs for the wahook_pure module's localtime/mktime: the C time-zone code scripts get, on the
-- same Europe/Madrid DST cases as tests/unit/test_tz.c, plus the Lua-facing argument rules.
local pure = require "wahook_pure"

local SPRING_2026 = 1774746000 -- 2026-03-29T01:00:00Z, Madrid goes CET -> CEST
local AUTUMN_2026 = 1792890000 -- 2026-10-25T01:00:00Z, Madrid goes CEST -> CET

local function fields(t)
  return { t.year, t.month, t.day, t.hour, t.min, t.sec, t.utc_offset, t.isdst, t.zone }
end

describe("wahook_pure.localtime", function()
  it("returns every field, with ISO weekdays", function()
    assert.same({ year = 2026, month = 1, day = 15, hour = 13, min = 0, sec = 0, wday = 4, yday = 15,
                  isdst = false, utc_offset = 3600, zone = "CET" },
                pure.localtime("Europe/Madrid", 1768478400))
    local s = pure.localtime("Europe/Madrid", 1784116800)
    assert.same({ 2026, 7, 15, 14, 0, 0, 7200, true, "CEST" }, fields(s))
    assert.equals(3, s.wday)
    assert.equals(196, s.yday)
    for _, k in ipairs({ "year", "month", "day", "hour", "min", "sec", "wday", "yday", "utc_offset" }) do
      assert.equals("integer", math.type(s[k]), k)
    end
  end)

  it("changes at the exact 2026 instants", function()
    assert.same({ 2026, 3, 29, 1, 59, 59, 3600, false, "CET" }, fields(pure.localtime("Europe/Madrid", SPRING_2026 - 1)))
    local sunday = pure.localtime("Europe/Madrid", SPRING_2026)
    assert.same({ 2026, 3, 29, 3, 0, 0, 7200, true, "CEST" }, fields(sunday))
    assert.equals(7, sunday.wday)
    assert.same({ 2026, 10, 25, 2, 59, 59, 7200, true, "CEST" }, fields(pure.localtime("Europe/Madrid", AUTUMN_2026 - 1)))
    assert.same({ 2026, 10, 25, 2, 0, 0, 3600, false, "CET" }, fields(pure.localtime("Europe/Madrid", AUTUMN_2026)))
  end)

  it("follows the footer rule in 2100", function()
    assert.same({ 2100, 3, 28, 3, 0, 0, 7200, true, "CEST" }, fields(pure.localtime("Europe/Madrid", 4109878800)))
    assert.same({ 2100, 10, 31, 2, 0, 0, 3600, false, "CET" }, fields(pure.localtime("Europe/Madrid", 4128627600)))
  end)

  it("knows other zones", function()
    assert.same({ 2026, 1, 15, 9, 0, 0, -10800, false, "-03" }, fields(pure.localtime("America/Sao_Paulo", 1768478400)))
    assert.same({ 2026, 1, 15, 17, 30, 0, 19800, false, "IST" }, fields(pure.localtime("Asia/Kolkata", 1768478400)))
    assert.same({ 1970, 1, 1, 0, 0, 0, 0, false, "UTC" }, fields(pure.localtime("UTC", 0)))
  end)

  it("floors fractional times and defaults to now", function()
    assert.same(pure.localtime("UTC", -1), pure.localtime("UTC", -0.5))
    assert.same(pure.localtime("UTC", 59), pure.localtime("UTC", 59.99))
    local before = os.time()
    local now = pure.mktime("UTC", pure.localtime("UTC"))
    assert.is_true(now >= before and now <= os.time())
  end)

  it("raises on bad zones and arguments", function()
    assert.has_error(function() pure.localtime("Mars/Olympus_Mons", 0) end,
                     "localtime: unknown time zone 'Mars/Olympus_Mons'")
    assert.error_matches(function() pure.localtime("../etc/passwd", 0) end, "invalid time zone")
    assert.error_matches(function() pure.localtime("/etc/localtime", 0) end, "invalid time zone")
    assert.error_matches(function() pure.localtime(nil, 0) end, "bad argument #1")
    assert.error_matches(function() pure.localtime("UTC", "soon") end, "bad argument #2")
    assert.error_matches(function() pure.localtime("UTC", 0 / 0) end, "bad argument #2")
    assert.error_matches(function() pure.localtime("UTC", math.maxinteger) end, "out of range")
  end)
end)

describe("wahook_pure.mktime", function()
  it("inverts localtime", function()
    assert.equals(1768478400, pure.mktime("Europe/Madrid", { year = 2026, month = 1, day = 15, hour = 13 }))
    assert.equals("integer", math.type(pure.mktime("UTC", { year = 2026, month = 1, day = 1 })))
    for t = SPRING_2026 - 86400, AUTUMN_2026 + 86400, 3600 * 37 + 17 do
      assert.equals(t, pure.mktime("Europe/Madrid", pure.localtime("Europe/Madrid", t)))
    end
  end)

  it("moves a time in the spring gap forward by the gap", function()
    local t = pure.mktime("Europe/Madrid", { year = 2026, month = 3, day = 29, hour = 2, min = 30 })
    assert.equals(SPRING_2026 + 1800, t)
    assert.same({ 2026, 3, 29, 3, 30, 0, 7200, true, "CEST" }, fields(pure.localtime("Europe/Madrid", t)))
  end)

  it("takes the earlier instant in the autumn overlap", function()
    local t = pure.mktime("Europe/Madrid", { year = 2026, month = 10, day = 25, hour = 2, min = 30 })
    assert.equals(AUTUMN_2026 - 1800, t)
    assert.same({ 2026, 10, 25, 2, 30, 0, 7200, true, "CEST" }, fields(pure.localtime("Europe/Madrid", t)))
  end)

  it("normalises out-of-range fields and ignores the derived ones", function()
    local function utc(f) return pure.mktime("UTC", f) end
    assert.equals(utc({ year = 2026, month = 1, day = 1 }), utc({ year = 2025, month = 13, day = 1 }))
    assert.equals(utc({ year = 2026, month = 2, day = 28 }), utc({ year = 2026, month = 3, day = 0 }))
    assert.equals(utc({ year = 2026, month = 2, day = 1 }), utc({ year = 2026, month = 1, day = 31, hour = 24 }))
    assert.equals(utc({ year = 2026, month = 1, day = 1 }),
                  utc({ year = 2026, month = 1, day = 1, wday = 3, yday = 200, isdst = true, utc_offset = 7200 }))
    assert.equals(utc({ year = 2026, month = 1, day = 1, hour = 12 }), utc({ year = 2026, month = 1, day = 1, hour = 12.0 }))
  end)

  it("raises on missing or bad fields", function()
    assert.error_matches(function() pure.mktime("UTC", { month = 1, day = 1 }) end, "field 'year' missing")
    assert.error_matches(function() pure.mktime("UTC", { year = 2026, month = 1 }) end, "field 'day' missing")
    assert.error_matches(function() pure.mktime("UTC", { year = 2026, month = 1, day = 1.5 }) end, "field 'day' is not an integer")
    assert.error_matches(function() pure.mktime("UTC", { year = 2026, month = 1, day = 1, hour = "x" }) end, "field 'hour'")
    assert.error_matches(function() pure.mktime("UTC", { year = 2 ^ 40, month = 1, day = 1 }) end, "out of range")
    assert.error_matches(function() pure.mktime("UTC", nil) end, "bad argument #2")
    assert.has_error(function() pure.mktime("Nowhere/Town", { year = 2026, month = 1, day = 1 }) end,
                     "mktime: unknown time zone 'Nowhere/Town'")
  end)
end)
