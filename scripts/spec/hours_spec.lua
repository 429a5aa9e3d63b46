-- Specs for scripts/hours.lua: opening intervals, yearly and dated holidays, the next opening
-- time across the 2026 Madrid DST changes (through the real time-zone code), and how it reads.
local fake = require("spec.support.wahook_fake")._install()
local settings = require "settings"
local hours = require "hours"

local function cfg_with(h)
  fake._reset{ config = h and { hours = h } or {} }
  return settings.get()
end

-- Epoch seconds of Madrid local times (computed with zoneinfo).
local T = {
  sat_1329 = 1774700940, sat_1330 = 1774701000,            -- 2026-03-28, CET
  mon_0900_cest = 1774854000,                              -- 2026-03-30, after the spring change
  sat_autumn_1345 = 1792842300, mon_autumn_0900 = 1793001600, -- 2026-10-24 / 10-26, CET again
  tue_1400 = 1768309200, tue_1600 = 1768316400,            -- 2026-01-13
  fri_1500 = 1768572000, sat_1000 = 1768640400,            -- 2026-01-16 / 17
  mon_0105_2000 = 1767639600, wed_0107_0900 = 1767772800,  -- Epiphany (01-06) in between
  wed_0401_2000 = 1775066400, sat_0404_1000 = 1775289600,  -- Holy Thursday and Good Friday 2026
  thu_1224_2000 = 1798138800, sat_1226_1000 = 1798275600,  -- Christmas
  tue_2027_0105_1945 = 1799174700, thu_2027_0107_0900 = 1799308800,
  sun_spring_0330_cest = 1774747800,                       -- 03:30 CEST, 02:30 does not exist
  sun_autumn_0230_cest = 1792888200,                       -- the first of the two 02:30s
}

describe("hours", function()
  local cfg
  before_each(function() cfg = cfg_with(nil) end)

  it("know the weekly intervals, end excluded", function()
    assert.is_true(hours.is_open(cfg.hours, T.sat_1329))
    assert.is_false(hours.is_open(cfg.hours, T.sat_1330))
    assert.is_false(hours.is_open(cfg.hours, T.tue_1400))
    assert.is_true(hours.is_open(cfg.hours, T.tue_1600))
    assert.is_false(hours.is_open(cfg.hours, T.tue_1400 + 60))
    assert.is_true(hours.is_open(cfg.hours, T.tue_1400 - 60))
  end)

  it("next_open is now when open", function()
    assert.equals(T.tue_1600 + 10, hours.next_open(cfg.hours, T.tue_1600 + 10))
  end)

  it("next_open later the same day and the next day", function()
    assert.equals(T.tue_1600, hours.next_open(cfg.hours, T.tue_1400))
    assert.equals(T.sat_1000, hours.next_open(cfg.hours, T.fri_1500))
  end)

  it("next_open over the spring DST change: Saturday CET to Monday 09:00 CEST", function()
    local at = hours.next_open(cfg.hours, T.sat_1330)
    assert.equals(T.mon_0900_cest, at)
    local lt = fake.localtime("Europe/Madrid", at)
    assert.same({ 9, 0, "CEST" }, { lt.hour, lt.min, lt.zone })
    -- 43 h 30 min on the wall clock, one hour of it lost to the change.
    assert.equals(43 * 3600 + 30 * 60 - 3600, at - T.sat_1330)
  end)

  it("next_open over the autumn DST change: Monday 09:00 CET", function()
    local at = hours.next_open(cfg.hours, T.sat_autumn_1345)
    assert.equals(T.mon_autumn_0900, at)
    assert.equals("CET", fake.localtime("Europe/Madrid", at).zone)
  end)

  it("skip yearly holidays and dated ones", function()
    assert.equals(T.wed_0107_0900, hours.next_open(cfg.hours, T.mon_0105_2000))
    assert.is_false(hours.is_open(cfg.hours, T.mon_0105_2000 + 14 * 3600)) -- Tuesday 6th, 10:00
    assert.equals(T.sat_0404_1000, hours.next_open(cfg.hours, T.wed_0401_2000))
    assert.equals(T.sat_1226_1000, hours.next_open(cfg.hours, T.thu_1224_2000))
    assert.equals(T.thu_2027_0107_0900, hours.next_open(cfg.hours, T.tue_2027_0105_1945))
  end)

  it("an opening inside the spring gap moves forward; an ambiguous one is the first", function()
    cfg = cfg_with({ weekly = { sun = { "02:30-05:00" } }, holidays = {} })
    local at = hours.next_open(cfg.hours, T.sat_1330)
    assert.equals(T.sun_spring_0330_cest, at)
    assert.is_true(hours.is_open(cfg.hours, at))
    assert.equals(T.sun_autumn_0230_cest, hours.next_open(cfg.hours, T.sat_autumn_1345))
  end)

  it("a schedule that never opens has no next opening", function()
    cfg = cfg_with({ weekly = { mon = {}, tue = {}, wed = {}, thu = {}, fri = {}, sat = {}, sun = {} } })
    assert.is_false(hours.is_open(cfg.hours, T.tue_1600))
    assert.is_nil(hours.next_open(cfg.hours, T.tue_1600))
    assert.equals("en cuanto volvamos a abrir", hours.describe(cfg.hours, nil, T.tue_1600, cfg.texts))
  end)

  it("24:00 closes at midnight, in another zone", function()
    cfg = cfg_with({ timezone = "America/Sao_Paulo", weekly = { tue = { "20:00-24:00" } }, holidays = {} })
    -- 2026-01-13 23:30 in Sao Paulo (UTC-3) is 02:30Z on the 14th.
    assert.is_true(hours.is_open(cfg.hours, 1768357800))
    assert.is_false(hours.is_open(cfg.hours, 1768357800 + 1800))
  end)

  it("describe the next opening as a customer reads it", function()
    local t = cfg.texts
    assert.equals("hoy a las 16:00", hours.describe(cfg.hours, T.tue_1600, T.tue_1400, t))
    assert.equals("mañana a las 10:00", hours.describe(cfg.hours, T.sat_1000, T.fri_1500, t))
    assert.equals("el lunes a las 09:00", hours.describe(cfg.hours, T.mon_0900_cest, T.sat_1330, t))
    cfg = cfg_with({ weekly = { mon = { "09:00-10:00" }, tue = {}, wed = {}, thu = {}, fri = {}, sat = {}, sun = {} },
                     holidays = { "2026-01-12" } })
    local at = hours.next_open(cfg.hours, T.mon_0105_2000)
    assert.equals(1768809600, at) -- Monday 19th, two weeks on
    assert.equals("el 19/1 a las 09:00", hours.describe(cfg.hours, at, T.mon_0105_2000, t))
  end)
end)
